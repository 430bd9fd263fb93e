# syntax=docker/dockerfile:1
#
# crm container image: a single self-contained binary on distroless (no shell, no package
# manager), running as uid 65532.
#
#   docker build -t crm .
#   docker run --rm -p 8080:8080 crm
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/crm:0.1.0 --push .
#
# Build stage: Bun comes from the npm package `bun` (package-lock.json), so only the npm registry is
# needed. It runs on the build machine's own platform and cross-compiles for the target platform
# (bun build --compile --target=...), which is fast and needs no emulation for multi-arch images.
FROM --platform=$BUILDPLATFORM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/ ./scripts/
COPY src/ ./src/
ARG TARGETARCH
RUN set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) arch=x64 ;; \
      arm64) arch=arm64 ;; \
      *) echo "crm: unsupported architecture ${TARGETARCH} (amd64 and arm64 only)" >&2; exit 1 ;; \
    esac; \
    npm run build -- "bun-linux-${arch}"; \
    mkdir -p /out; \
    cp "dist/crm-linux-${arch}" /out/crm; \
    chmod 0755 /out/crm

# Runtime stage. `ldd crm-linux-x64` lists only libc, libm, libpthread, libdl and ld-linux (no
# libstdc++, no libgcc_s, no libssl: Bun links BoringSSL and its CA roots in), so base-nossl (glibc,
# CA certificates, tzdata, /etc/passwd with nonroot) is the smallest distroless image that runs it.
FROM gcr.io/distroless/base-nossl-debian12:nonroot
COPY --from=build /out/crm /crm
COPY deploy/container-config.yaml /etc/crm/config.yaml
# Numeric, so Kubernetes' runAsNonRoot can verify it (a user *name* makes it refuse to start).
# 65532 is distroless' "nonroot".
USER 65532:65532
EXPOSE 8080
# No HEALTHCHECK: distroless has no shell or curl to run one, and crm has no self-probe command.
# Orchestrators probe GET /healthz on port 8080 instead (200 ok, 503 while draining after SIGTERM);
# see deploy/kubernetes/deployment.yaml.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/crm", "-config", "/etc/crm/config.yaml"]
