// Package clickhouse holds callpipe's ClickHouse schema as versioned
// migrations (NNNN_name.sql, applied in order by store/callsdb.Migrator).
// `{db}` in a file is replaced by the configured database name. Statements are
// separated by a `;` at the end of a line. See README.md for the design.
package clickhouse

import "embed"

// Migrations holds the *.sql files of this directory.
//
//go:embed *.sql
var Migrations embed.FS
