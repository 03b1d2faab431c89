// A Node client of taskprocessor.v1.TaskService and of gRPC health.
//
// Nothing is generated ahead of time: @grpc/proto-loader reads the contract
// from the repository's proto/ folder when the module loads, so the client is
// never stale. proto-loader bundles google/protobuf/*.proto (Value,
// Timestamp, ...), so only proto/ is needed as an include directory.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import grpcHealthCheck from 'grpc-health-check';

/** The repository's proto/ folder: the contract itself. */
export const PROTO_DIR = fileURLToPath(new URL('../../proto', import.meta.url));
export const TASK_SERVICE_PROTO = path.join('taskprocessor', 'v1', 'task_service.proto');

/**
 * How messages look in JavaScript: field names exactly as in the .proto,
 * enums as their names, 64-bit integers as decimal strings (JavaScript
 * numbers cannot hold every uint64), unset scalars as their defaults, and
 * a `kind`-style property naming the member set in each oneof.
 */
export const LOADER_OPTIONS = {
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

const packageDefinition = protoLoader.loadSync(TASK_SERVICE_PROTO, LOADER_OPTIONS);
const taskprocessor = grpc.loadPackageDefinition(packageDefinition).taskprocessor.v1;

/** The generated-at-run-time client class of TaskService. */
export const TaskServiceClient = taskprocessor.TaskService;

/** A client class for grpc.health.v1.Health, from grpc-health-check's own proto. */
export const HealthClient = grpc.makeClientConstructor(
  grpcHealthCheck.service,
  'grpc.health.v1.Health',
);

/**
 * Channel credentials: plaintext by default. With `ca` (the PEM of the CA
 * that signed the server's certificate, a string or Buffer), TLS that
 * verifies the server's certificate against it, and its name against the
 * address's host; with `token` too, `authorization: Bearer <token>` on every
 * call. grpc-js sends call credentials over TLS only.
 */
export function channelCredentials({ ca, token } = {}) {
  if (!ca) {
    if (token) throw new Error('a token is sent over TLS only: give the CA too');
    return grpc.credentials.createInsecure();
  }
  const tls = grpc.credentials.createSsl(Buffer.from(ca));
  if (!token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_options, callback) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

/**
 * Clients of both services over one channel: plaintext, or TLS and a token
 * with `{ ca, token }` (see channelCredentials).
 */
export function connect(address, { ca, token } = {}) {
  const credentials = channelCredentials({ ca, token });
  const tasks = new TaskServiceClient(address, credentials);
  const health = new HealthClient(address, credentials, {
    channelOverride: tasks.getChannel(),
  });
  return { tasks, health, close: () => tasks.close() };
}

/** Resolves once the client's channel is connected, or rejects at the deadline. */
export function waitForReady(client, timeoutMilliseconds) {
  return new Promise((resolve, reject) => {
    client.waitForReady(Date.now() + timeoutMilliseconds, (error) =>
      error ? reject(error) : resolve(),
    );
  });
}

/** Calls a unary method and returns a promise of its response. */
export function call(client, method, request, timeoutMilliseconds = 10_000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMilliseconds }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// google.protobuf.Value below is spelt in lowerCamelCase (`numberValue`,
// `structValue`, ...) although our own messages keep the .proto's snake_case:
// proto-loader takes the well-known types from protobufjs's bundled
// definitions, whose field names are camelCase whatever `keepCase` says. A
// snake_case member would be dropped silently and send an empty Value,
// which the server refuses as INVALID_ARGUMENT.

/** Any JSON value as a google.protobuf.Value message. */
export function toValue(json) {
  if (json === null) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  switch (typeof json) {
    case 'number':
      return { numberValue: json };
    case 'string':
      return { stringValue: json };
    case 'boolean':
      return { boolValue: json };
    case 'object':
      return {
        structValue: {
          fields: Object.fromEntries(Object.entries(json).map(([key, item]) => [key, toValue(item)])),
        },
      };
    default:
      throw new TypeError(`not a JSON value: ${typeof json}`);
  }
}

const VALUE_KINDS = [
  'nullValue',
  'numberValue',
  'stringValue',
  'boolValue',
  'listValue',
  'structValue',
];

/**
 * A google.protobuf.Value message as the JSON value it holds. Decoded
 * messages name their member in `kind` (the `oneofs` option); messages built
 * by toValue have just the one member.
 */
export function fromValue(value) {
  const kind = value?.kind ?? VALUE_KINDS.find((member) => value?.[member] !== undefined);
  switch (kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'listValue':
      return (value.listValue.values ?? []).map(fromValue);
    case 'structValue':
      return Object.fromEntries(
        Object.entries(value.structValue.fields ?? {}).map(([key, item]) => [key, fromValue(item)]),
      );
    default:
      throw new TypeError(`a google.protobuf.Value with no value: ${JSON.stringify(value)}`);
  }
}
