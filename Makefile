# The two commands the README promises: `make demo` and `make test`.
.PHONY: demo test build generate lint docs

BIN := $(CURDIR)/bin

build:
	@mkdir -p $(BIN)
	go build -o $(BIN)/controlplane ./controlplane/cmd/controlplane
	go build -o $(BIN)/edged ./edged/cmd/edged
	go build -o $(BIN)/aegisctl ./aegisctl/cmd/aegisctl
	go build -o $(BIN)/aegis-loadtest ./edged/cmd/aegis-loadtest
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
