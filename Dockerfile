# plinth: one static binary on a base with the filesystem tools the node runs.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .git is not in the build context: the commit comes in as COMMIT, as the Makefile stamps it
# (docker build --build-arg VERSION=$(git describe --tags --always --dirty) --build-arg COMMIT=$(git rev-parse HEAD) .).
ARG VERSION=dev
ARG COMMIT=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/plinth ./cmd/plinth

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends e2fsprogs xfsprogs btrfs-progs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/plinth /usr/bin/plinth
LABEL org.opencontainers.image.title="plinth" \
      org.opencontainers.image.description="Node-local disks as CSI volumes, accelerators as extended resources" \
      org.opencontainers.image.source="https://github.com/plinth-dev/plinth"
ENTRYPOINT ["/usr/bin/plinth"]
