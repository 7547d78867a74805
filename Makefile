# The two commands the README promises: `make demo` and `make test`.
.PHONY: demo test build generate lint

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
