package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReportMediansAndRatios(t *testing.T) {
	tsv := "round\tconns\ttarget\trps\tp50_us\tp99_us\terrors\tcpu_us_per_req\tforeign_pct_core\n" +
		"1\t16\tnginx\t1000\t400\t900\t0\t20\t3\n" +
		"1\t16\ttollgate\t500\t800\t1800\t0\t50\t4\n" +
		"2\t16\tnginx\t2000\t400\t900\t0\t22\t5\n" +
		"2\t16\ttollgate\t1200\t700\t1600\t1\t48\t2\n" +
		"3\t16\tnginx\t1500\t400\t900\t0\t21\t1\n" +
		"3\t16\ttollgate\t900\t750\t1700\t0\t49\t9\n"
	path := filepath.Join(t.TempDir(), "results.tsv")
	require.NoError(t, os.WriteFile(path, []byte(tsv), 0o600))
	runs, err := load(path)
	require.NoError(t, err)
	require.Len(t, runs, 6)

	var out strings.Builder
	write(&out, runs, "nginx")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 4)
	assert.Equal(t, "| 16 | nginx | 1500 | 1000–2000 | 1.00× | 0.40 | 0.90 | 21.0 | 0 | 3 |", lines[2])
	// Ratios are per round (0.5, 0.6, 0.6), then the median.
	assert.Equal(t, "| 16 | tollgate | 900 | 500–1200 | 0.60× | 0.75 | 1.70 | 49.0 | 1 | 4 |", lines[3])
}

func TestReportRefusesBadRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.tsv")
	require.NoError(t, os.WriteFile(path, []byte("a\tb\tc\td\te\tf\tg\th\ti\n1\t16\tnginx\tx\t1\t1\t0\t1\t1\n"), 0o600))
	_, err := load(path)
	assert.ErrorContains(t, err, "column 4")
}
