# The two commands the README promises: `make demo` and `make test`.
.PHONY: demo test build generate lint docs image package

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
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/aegis-loadtest ./edged/testbed/cmd/aegis-loadtest
	@ln -sf aegisctl $(BIN)/aegis

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

generate:
	go tool buf generate

lint:
	go tool buf lint

# docs/cli-reference.md and docs/man/*.1 are rendered from the CLIs' own definitions;
# go test fails when they are out of date.
docs:
	cd aegisctl && go test ./internal/cli -run TestReferenceDocs -update
	cd edged && go test ./cmd/edged -run TestManPage -update
	cd controlplane && go test ./cmd/controlplane -run TestManPage -update

# The control plane's container image, without a Docker daemon: dist/aegis-controlplane-image.tar
# (docker load / podman load / crane push). deploy/Dockerfile builds the same with Docker.
image:
	go run ./deploy/cmd/build-image -o dist/aegis-controlplane-image.tar -version $(VERSION)

# The edged package: dist/aegis-edge_VERSION_ARCH.deb and .rpm (nfpm, pinned in tools/),
# holding edged, aegisctl, the aegis link, the systemd unit and /etc/aegis/edged.yaml.
GOARCH ?= $(shell go env GOARCH)
# Package versions must start with a digit: v1.2.3 -> 1.2.3, an untagged tree -> 0.0.0~gitSHA.
PKG_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo $${v\#v} || echo 0.0.0~git$$(git rev-parse --short HEAD))
PKG_ENV = VERSION=$(PKG_VERSION) GOARCH=$(GOARCH) GOVERSION=$(shell go env GOVERSION)
package:
	@mkdir -p dist/pkg
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) go build -trimpath -ldflags "-s -w $(LDFLAGS)" -o dist/pkg/edged ./edged/cmd/edged
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) go build -trimpath -ldflags "-s -w $(LDFLAGS)" -o dist/pkg/aegisctl ./aegisctl/cmd/aegisctl
	$(PKG_ENV) go tool nfpm package -f deploy/nfpm/nfpm.yaml -p deb -t dist/
	$(PKG_ENV) go tool nfpm package -f deploy/nfpm/nfpm.yaml -p rpm -t dist/
