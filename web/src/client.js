// The client of the live view and the console: gRPC-Web to the page's own origin, with the
// API key typed in the page's `api-key` field sent as a bearer token (the key stays in this
// tab's sessionStorage only). A page left open keeps following across restarts (each retry
// waits up to 2 s).
import { createDagoClient } from "../../clients/typescript/src/dago.js";

export const $ = (id) => document.getElementById(id);

let clientFor = { key: null, client: null };

/** The client for the key in the page's field now (made again when the key changes). */
export function dago() {
  const key = $("api-key").value.trim();
  if (clientFor.key !== key) {
    sessionStorage.setItem("dago.apiKey", key);
    clientFor = {
      key,
      client: createDagoClient(window.location.origin, {
        transport: "grpc-web",
        maxRetries: 100,
        apiKey: key || undefined,
      }),
    };
  }
  return clientFor.client;
}
