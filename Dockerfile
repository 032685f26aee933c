# plinth: one static binary on a base with the filesystem tools the node runs.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/plinth ./cmd/plinth

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends e2fsprogs xfsprogs btrfs-progs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/plinth /usr/bin/plinth
LABEL org.opencontainers.image.title="plinth" \
      org.opencontainers.image.description="Node-local disks as CSI volumes, accelerators as extended resources" \
      org.opencontainers.image.source="https://github.com/plinth-dev/plinth"
ENTRYPOINT ["/usr/bin/plinth"]
