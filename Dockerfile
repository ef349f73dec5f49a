# syntax=docker/dockerfile:1
# Build stage: static binaries, module downloads cached between builds.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/tollgate ./cmd/echoback

# Runtime stage: no shell, no package manager, non-root.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tollgate /out/echoback /usr/local/bin/
COPY deploy/config.docker.json /etc/tollgate/config.json
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["-config", "/etc/tollgate/config.json"]
