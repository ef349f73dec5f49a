// Package openapi holds the OpenAPI 3.1 description of Tollgate's admin
// API (openapi.json beside this file). httpapi serves it at
// GET /openapi.json and package openapitest checks every admin test's
// requests and answers against it, so the description and the code cannot
// drift apart. It has no behaviour and imports nothing.
package openapi

import _ "embed"

// JSON is the description, as served.
//
//go:embed openapi.json
var JSON []byte
