# dago_example.rb runs one graph on dago with the Ruby code generated from proto/dago:
# SubmitGraph, WatchGraph to the terminal event (resuming after the last seq when the stream
# drops), then GetGraphResult. It prints one JSON object per line on stdout:
#
#   {"submitted": <SubmitGraphResponse>}
#   {"event": <Event>}                     (one per event, heartbeats left out)
#   {"result": <GetGraphResultResponse>}
#
# and exits 0 when the run completed, 3 when it failed or was cancelled, 1 on any other error.
#
#   ruby -I GEN_DIR clients/ruby/dago_example.rb [--target host:port] [--timeout 60] REQUEST.json
#
# GEN_DIR holds the generated code (make gen-ruby: clients/ruby/gen). REQUEST.json is a
# SubmitGraphRequest in the proto's JSON form (as in examples/). The target defaults to
# $DAGO_TARGET, else localhost:50051 (the API; Envoy's native gRPC is on localhost:8080).
# When $DAGO_API_KEY is set it is sent as `authorization: Bearer <key>`.
# Run: clients/ruby/run.sh (docs/clients.md#ruby).

require "json"
require "optparse"
require "grpc"
require "google/rpc/status_pb"
require "google/rpc/error_details_pb" # resolves the error details
require "dago/v1/orchestrator_services_pb"

MAX_RESUMES = 20 # times in a row a dropped watch is reopened before giving up
TERMINAL = %i[graph_completed graph_failed graph_cancelled].freeze
TRANSIENT = [GRPC::Unavailable, GRPC::Internal, GRPC::Unknown, GRPC::Aborted].freeze

def emit(key, message)
  $stdout.puts("{#{key.to_json}: #{message.to_json(preserve_proto_fieldnames: true)}}")
  $stdout.flush
end

# The call's name, the status and the google.rpc details of a gRPC error, one JSON a line.
def describe(call, error)
  lines = ["#{call}: #{error.class.name.split('::').last}: #{error.details}"]
  status = error.to_rpc_status
  status&.details&.each do |any|
    type_name = any.type_url.split("/").last
    klass = Google::Protobuf::DescriptorPool.generated_pool.lookup(type_name)&.msgclass
    lines << (klass ? "  #{klass.decode(any.value).to_json(preserve_proto_fieldnames: true)}" :
                      "  (a detail not decoded: #{type_name})")
  end
  lines.join("\n")
end

# Prints the run's events until the terminal one; reopens a dropped stream after the last seq.
def watch(stub, graph_id, options)
  last = 0
  failures = 0
  loop do
    begin
      request = Dago::V1::WatchGraphRequest.new(graph_id: graph_id, after_seq: last)
      stub.watch_graph(request, **options).each do |response|
        event = response.event
        next if event.nil? || event.payload == :heartbeat || event.seq <= last

        last = event.seq
        failures = 0
        emit("event", event)
        return if TERMINAL.include?(event.payload)
      end
      reason = "the stream ended"
    rescue *TRANSIENT => e
      reason = e.message
    end
    failures += 1
    raise "WatchGraph: gave up after #{MAX_RESUMES} resumes: #{reason}" if failures > MAX_RESUMES

    warn "watch dropped (#{reason}): resuming after seq #{last}"
    sleep([0.1 * (2**(failures - 1)), 2.0].min) # 100 ms, doubling, at most 2 s
  end
end

def main
  target = ENV.fetch("DAGO_TARGET", "localhost:50051")
  timeout = 60.0
  parser = OptionParser.new do |o|
    o.banner = "usage: dago_example.rb [--target host:port] [--timeout 60] REQUEST.json"
    o.on("--target TARGET", "host:port of the API or Envoy") { |v| target = v }
    o.on("--timeout SECONDS", Float, "time the whole run may take") { |v| timeout = v }
  end
  args = parser.parse(ARGV)
  abort(parser.banner) unless args.size == 1

  request = Dago::V1::SubmitGraphRequest.decode_json(File.read(args[0]))
  metadata = {}
  metadata["authorization"] = "Bearer #{ENV['DAGO_API_KEY']}" unless ENV.fetch("DAGO_API_KEY", "").empty?
  options = { metadata: metadata, deadline: Time.now + timeout }
  stub = Dago::V1::OrchestratorService::Stub.new(target, :this_channel_is_insecure)

  call = "SubmitGraph"
  submitted = stub.submit_graph(request, **options)
  emit("submitted", submitted)
  call = "WatchGraph"
  watch(stub, submitted.graph_id, options)
  call = "GetGraphResult"
  result = stub.get_graph_result(Dago::V1::GetGraphResultRequest.new(graph_id: submitted.graph_id), **options)
  emit("result", result)
  return 0 if result.state == :GRAPH_STATE_COMPLETED

  warn "dago_example: run #{submitted.graph_id} ended #{result.state}"
  3
rescue GRPC::BadStatus => e
  warn "dago_example: #{describe(call, e)}"
  1
end

exit(main)
