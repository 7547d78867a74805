# The two commands the README promises: `make demo` and `make test`.
.PHONY: demo test build generate lint image package

BIN := $(CURDIR)/bin
# Release builds stamp --version through api/buildinfo.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/aegis-edge/aegis/api/buildinfo.version=$(VERSION) -X github.com/aegis-edge/aegis/api/buildinfo.commit=$(COMMIT)

build:
	@mkdir -p $(BIN)
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/controlplane ./controlplane/cmd/controlplane
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/edged ./edged/cmd/edged
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/aegisctl ./aegisctl/cmd/aegisctl
	@ln -sf aegisctl $(BIN)/aegis

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

generate:
	go tool buf generate

lint:
	go tool buf lint

# The control plane's container image, without a Docker daemon: dist/aegis-controlplane-image.tar
# (docker load / podman load / crane push). deploy/Dockerfile builds the same with Docker.
image:
	go run ./deploy/cmd/build-image -o dist/aegis-controlplane-image.tar -version $(VERSION)
