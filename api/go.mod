module github.com/aegis-edge/aegis/api

go 1.26.7

require (
	connectrpc.com/connect v1.21.1
	github.com/golang-jwt/jwt/v5 v5.3.1
	google.golang.org/protobuf v1.36.12
)
