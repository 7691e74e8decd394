// Command dago-example runs one graph on dago with the Go code generated from proto/dago:
// SubmitGraph, WatchGraph to the terminal event (resuming after the last seq when the stream
// drops), then GetGraphResult. It prints one JSON object per line on stdout:
//
//	{"submitted": <SubmitGraphResponse>}
//	{"event": <Event>}                     (one per event, heartbeats left out)
//	{"result": <GetGraphResultResponse>}
//
// and exits 0 when the run completed, 3 when it failed or was cancelled, 1 on any other error.
//
//	dago-example [-target host:port] [-timeout 60s] REQUEST.json
//
// REQUEST.json is a SubmitGraphRequest in the proto's JSON form (as in examples/). The target
// defaults to $DAGO_TARGET, else localhost:50051 (the API; Envoy's native gRPC is on
// localhost:8080). When $DAGO_API_KEY is set it is sent as `authorization: Bearer <key>`.
//
// Build: clients/go/build.sh (docs/clients.md#go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	protov1 "github.com/golang/protobuf/proto"
	_ "google.golang.org/genproto/googleapis/rpc/errdetails" // resolves the error details
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	dagov1 "dago.dev/clients/go/gen/dago/v1"
)

// maxResumes is how many times in a row a dropped watch is reopened before giving up.
const maxResumes = 20

var jsonOut = protojson.MarshalOptions{UseProtoNames: true}

func main() {
	target := flag.String("target", envOr("DAGO_TARGET", "localhost:50051"), "host:port of the API or Envoy")
	timeout := flag.Duration("timeout", 60*time.Second, "time the whole run may take")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [-target host:port] [-timeout 60s] REQUEST.json\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	code, err := run(*target, flag.Arg(0), *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dago-example:", err)
	}
	os.Exit(code)
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run(target, requestFile string, timeout time.Duration) (int, error) {
	body, err := os.ReadFile(requestFile)
	if err != nil {
		return 1, err
	}
	req := &dagov1.SubmitGraphRequest{}
	if err := protojson.Unmarshal(body, req); err != nil {
		return 1, fmt.Errorf("%s: %w", requestFile, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if key := os.Getenv("DAGO_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	// grpc.Dial and WithInsecure are what Debian's grpc-go (1.33) has; newer releases also
	// offer grpc.NewClient and insecure.NewCredentials().
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		return 1, err
	}
	defer conn.Close()
	client := dagov1.NewOrchestratorServiceClient(conn)

	submitted, err := client.SubmitGraph(ctx, req)
	if err != nil {
		return 1, describe("SubmitGraph", err)
	}
	if err := emit("submitted", submitted); err != nil {
		return 1, err
	}

	if err := watch(ctx, client, submitted.GraphId); err != nil {
		return 1, err
	}

	result, err := client.GetGraphResult(ctx, &dagov1.GetGraphResultRequest{GraphId: submitted.GraphId})
	if err != nil {
		return 1, describe("GetGraphResult", err)
	}
	if err := emit("result", result); err != nil {
		return 1, err
	}
	if result.State != dagov1.GraphState_GRAPH_STATE_COMPLETED {
		return 3, fmt.Errorf("run %s ended %s", submitted.GraphId, result.State)
	}
	return 0, nil
}

// watch prints the run's events until the terminal one. When the stream fails with a
// transient code or ends early, it is reopened after the last seq printed.
func watch(ctx context.Context, client dagov1.OrchestratorServiceClient, graphID string) error {
	var last int64
	failures := 0
	for {
		// WaitForReady: a reopened watch waits for the connection to come back (within ctx).
		req := &dagov1.WatchGraphRequest{GraphId: graphID, AfterSeq: last}
		stream, err := client.WatchGraph(ctx, req, grpc.WaitForReady(true))
		if err != nil {
			return describe("WatchGraph", err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				if !transient(err) {
					return describe("WatchGraph", err)
				}
				failures++
				if failures > maxResumes {
					return fmt.Errorf("WatchGraph: gave up after %d resumes: %w", maxResumes, err)
				}
				fmt.Fprintf(os.Stderr, "watch dropped (%v): resuming after seq %d\n", err, last)
				time.Sleep(backoff(failures))
				break
			}
			ev := resp.Event
			if ev == nil || ev.GetHeartbeat() != nil || ev.Seq <= last {
				continue // heartbeats and events already printed
			}
			last = ev.Seq
			failures = 0
			if err := emit("event", ev); err != nil {
				return err
			}
			switch ev.Payload.(type) {
			case *dagov1.Event_GraphCompleted, *dagov1.Event_GraphFailed, *dagov1.Event_GraphCancelled:
				return nil
			}
		}
	}
}

// backoff before the n-th resume in a row: 100 ms, doubling, at most 2 s.
func backoff(n int) time.Duration {
	d := 100 * time.Millisecond << (n - 1)
	if n > 5 || d > 2*time.Second {
		return 2 * time.Second
	}
	return d
}

// transient: worth reopening the watch (an early end of the stream counts).
func transient(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.Aborted:
		return true
	}
	return false
}

// describe adds the call's name and the google.rpc details of a gRPC error.
func describe(call string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", call, err)
	}
	msg := fmt.Sprintf("%s: %s: %s", call, st.Code(), st.Message())
	for _, d := range st.Details() { // google.rpc.BadRequest, ResourceInfo...: one JSON a line
		// MessageV2: Debian's genproto (2020) has messages of the older API; newer ones pass.
		if m, ok := d.(protov1.Message); ok {
			if b, err := jsonOut.Marshal(protov1.MessageV2(m)); err == nil {
				msg += "\n  " + string(b)
				continue
			}
		}
		msg += fmt.Sprintf("\n  (a detail not decoded: %v)", d)
	}
	return errors.New(msg)
}

func emit(key string, m proto.Message) error {
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("{%q: %s}\n", key, b)
	return err
}
