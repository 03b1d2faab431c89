# task-processor container image.
#
#   docker build -t task-processor:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 --stop-timeout 40 \
#       -v task-processor-data:/var/lib/task-processor task-processor:0.1.0
#
# Two stages: a Rust builder, and a distroless runtime holding only the
# binary. glibc and libgcc come with the base; nothing else is linked:
# SQLite (sqlx's bundled build) and rustls (TLS to PostgreSQL, with its own
# root certificates) are compiled in, and there is no protoc, since build.rs
# compiles proto/ with protox.
#
# Tasks live in SQLite at /var/lib/task-processor/tasks.db, a VOLUME owned by
# the nonroot user. Without -v, Docker gives each container an anonymous
# volume, so tasks outlive a restart of that container but not `docker rm`
# (or --rm); a named volume, as above, keeps them across containers. A
# named volume starts as a copy of the image's directory, owner included; a
# host directory bind-mounted there must be writable by uid 65532. SQLite
# locks the file: one container per volume. Several replicas need PostgreSQL:
# -e TASK_PROCESSOR_STORE=postgres://USER:PASSWORD@HOST:5432/DB.
#
# Configuration. Layers, later ones win: built-in defaults < YAML file
# (`--config PATH`, keys as in config/example.yaml) < environment < flags.
# The image sets one variable, TASK_PROCESSOR_STORE, because the built-in
# default (task-processor.db in the working directory) is not on the volume.
# Being an environment variable, it sits above a mounted config file: a
# `store:` key there is overridden, so choose the store with -e or --store.
# It sets no other variable, for the same reason. Give them with
# `docker run -e NAME=value` or in the pod spec:
#   SERVER_HOST, SERVER_PORT           gRPC address halves (default 0.0.0.0:50051)
#   TASK_PROCESSOR_ADMIN_LISTEN        admin HTTP: /metrics /healthz /readyz (0.0.0.0:9090)
#   PROCESSING_MAX_CONCURRENT          tasks running at once (10)
#   TASK_PROCESSOR_QUEUE_CAPACITY      tasks waiting at most (10000)
#   PROCESSING_DEFAULT_TIMEOUT         timeout of a task that asks for none (60s)
#   PROCESSING_MAX_TIMEOUT             largest timeout a task may ask for (5m)
#   TASK_PROCESSOR_MAX_DATA_BYTES      largest task data (1048576)
#   TASK_PROCESSOR_DEMO_DURATION       how long a demo task works (2s)
#   TASK_PROCESSOR_NODE_NAME           name in Task.node (host name + random suffix)
#   TASK_PROCESSOR_DRAIN_PERIOD        after SIGTERM: reads go on, creates refused (5s)
#   TASK_PROCESSOR_SHUTDOWN_GRACE      then: running tasks may finish (25s)
#   TASK_PROCESSOR_RETENTION           how long finished tasks are kept (1day)
#   TASK_PROCESSOR_MAX_FINISHED_TASKS  finished tasks kept at most (100000)
#   TASK_PROCESSOR_STORE               memory | sqlite://PATH | postgres://... (set
#                                      here: sqlite:///var/lib/task-processor/tasks.db)
#   TASK_PROCESSOR_LEASE               PostgreSQL: a replica's claim on a running
#                                      task, unless renewed (30s)
#   LOG_LEVEL                          error|warn|info|debug|trace (info); RUST_LOG overrides
#   LOG_FORMAT                         json|text (json: one object per line on stdout)
#
# Stopping: SIGTERM starts drain (5s) + grace (25s) + forced stop, about 35s
# in all, so give `docker stop` more than its default 10s (`--stop-timeout 40`
# or `docker stop -t 40`); Kubernetes uses terminationGracePeriodSeconds.

# Both bases are Debian 12 (bookworm), so the binary's glibc matches the
# runtime's. Pin by digest too (image@sha256:...) for reproducible builds.

# ---------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS builder

WORKDIR /build

# The data directory, made here because the runtime has no shell to run
# mkdir; the runtime stage copies it, owned by the nonroot user. First, so
# that its layer is never rebuilt.
RUN mkdir -p /var/lib/task-processor

# Dependencies first, in their own layer: it is rebuilt only when the
# manifests, build.rs or the protos change, not on every source edit.
# build.rs needs proto/ (it generates the gRPC code), so it comes along.
# The stubs let cargo compile every dependency and run build.rs without the
# real sources. examples/ and tests/ are left out: `--bin` builds only the
# binary and the library it uses.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin task-processor \
    && rm -rf src

# The real sources, and the SQL migrations that sqlx::migrate! embeds into
# the binary at compile time. COPY keeps the files' own modification times,
# which can be older than the stub build; touching the crate roots makes
# sure cargo rebuilds the crate itself instead of keeping the stub.
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin task-processor

# ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="task-processor" \
      org.opencontainers.image.description="A gRPC task processing service: bounded workers, timeouts, cancellation and live watch streams." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /build/target/release/task-processor /usr/local/bin/task-processor
COPY --from=builder --chown=65532:65532 /var/lib/task-processor /var/lib/task-processor

# The default store: a SQLite file on the volume below (see the top).
ENV TASK_PROCESSOR_STORE=sqlite:///var/lib/task-processor/tasks.db

# Declared after the directory is filled and chowned, so that a new volume
# starts as that copy: empty, writable by 65532. tasks.db, tasks.db-wal and
# tasks.db-shm go there.
VOLUME ["/var/lib/task-processor"]

# distroless's "nonroot" user, by number so that Kubernetes' runAsNonRoot
# can check it without reading /etc/passwd.
USER 65532:65532

# 50051: gRPC (TaskService, grpc.health.v1.Health, reflection).
# 9090: admin HTTP (/metrics, /healthz, /readyz).
EXPOSE 50051 9090

# No HEALTHCHECK: the image has no shell or client to run one. Kubernetes
# probes the gRPC health service natively; elsewhere use /healthz on 9090.
ENTRYPOINT ["/usr/local/bin/task-processor"]
