// Package migrations holds Tollgate's PostgreSQL schema as versioned goose
// SQL files (NNNNN_name.sql, applied in version order). persist applies them
// at start under an advisory lock, so instances starting together are safe.
// A shipped file is never edited: a schema change is a new file.
package migrations

import "embed"

// FS holds every migration file at its root.
//
//go:embed *.sql
var FS embed.FS
