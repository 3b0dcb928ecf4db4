// An A2A client written with the JavaScript SDK (@a2a-js/sdk), calling a Synq relay's A2A face:
// a second, independent implementation of A2A 1.0 on the other side of the relay
// (tests/test_a2a_js.py).
//
//   node client.mjs <face base URL> <bearer token>
//
// It verifies the card's signature with the JS SDK's verifier (keys from the card's jku), sends a
// streaming message over JSON-RPC and a blocking one over HTTP+JSON, and prints one JSON line per
// thing it saw, for the test to check.
import {
  ClientFactory,
  ClientFactoryOptions,
  DefaultAgentCardResolver,
  JsonRpcTransportFactory,
  RestTransportFactory,
} from "@a2a-js/sdk/client";
import { Role, TaskState, verifyAgentCardSignature } from "@a2a-js/sdk";
import * as jose from "jose";

const [base, token] = process.argv.slice(2);
const authFetch = (url, init = {}) => {
  const headers = new Headers(init.headers || {});
  headers.set("Authorization", `Bearer ${token}`);
  return fetch(url, { ...init, headers });
};
const say = (what) => console.log(JSON.stringify(what));

// The card as served, verified over the canonical form (A2A 1.0 §8.4) with the relay's JWKS.
const raw = await (await authFetch(`${base}/.well-known/agent-card.json`)).json();
await verifyAgentCardSignature(async (kid, jku) => {
  const jwks = await (await fetch(jku)).json();
  const jwk = jwks.keys.find((k) => k.kid === kid);
  return jose.importJWK(jwk, "EdDSA");
})(raw);
say({ card: raw.name, verified: true });

const resolver = new DefaultAgentCardResolver({ fetchImpl: authFetch });
const transports = [
  new JsonRpcTransportFactory({ fetchImpl: authFetch }),
  new RestTransportFactory({ fetchImpl: authFetch }),
];
// The card lives below the address, so the well-known path is given relative to it.
const card = await resolver.resolve(`${base}/`, ".well-known/agent-card.json");

const rpc = await new ClientFactory(
  ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
    transports,
    cardResolver: resolver,
    preferredTransports: ["JSONRPC"],
  }),
).createFromAgentCard(card);
let taskId = "";
for await (const event of rpc.sendMessageStream({
  message: {
    messageId: "tck-stream-001-js",
    role: Role.ROLE_USER,
    parts: [{ content: { $case: "text", value: "hello from JavaScript" } }],
  },
})) {
  const { $case, value } = event.payload;
  if ($case === "task") taskId = value.id;
  const state = value.status ? TaskState[value.status.state] : undefined;
  const text = value.artifact ? value.artifact.parts.map((p) => p.content?.value).join("") : undefined;
  say({ event: $case, state, text, taskId: value.taskId || value.id });
}
const task = await rpc.getTask({ id: taskId });
say({ getTask: TaskState[task.status.state], artifacts: task.artifacts.length });

const rest = await new ClientFactory(
  ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
    transports,
    cardResolver: resolver,
    preferredTransports: ["HTTP+JSON"],
  }),
).createFromAgentCard(card);
const answer = await rest.sendMessage({
  message: {
    messageId: "tck-complete-task-js",
    role: Role.ROLE_USER,
    parts: [{ content: { $case: "text", value: "and over REST" } }],
  },
});
const done = answer.payload?.$case === "task" ? answer.payload.value : answer;
say({
  rest: TaskState[done.status?.state],
  text: done.status?.message?.parts?.map((p) => p.content?.value).join(""),
});
