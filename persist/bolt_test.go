package persist_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/tollgate/tollgate/persist"
)

func TestBoltFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := persist.OpenBolt(path, discard())
	require.NoError(t, err)
	require.NoError(t, s.Close())
	info, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())
}

// TestBoltSecondOpenFails: a file in use is refused, not waited for.
func TestBoltSecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := persist.OpenBolt(path, discard())
	require.NoError(t, err)
	defer s.Close()

	_, err = persist.OpenBolt(path, discard())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "locked by another process")
}

// TestBoltCorruptRecord: a damaged record is an error, never a panic.
func TestBoltCorruptRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := persist.OpenBolt(path, discard())
	require.NoError(t, err)
	require.NoError(t, s.Close())

	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("clients")).Put([]byte("broken"), []byte{1, 2, 3})
	}))
	require.NoError(t, db.Close())

	s, err = persist.OpenBolt(path, discard())
	require.NoError(t, err)
	defer s.Close()
	_, err = s.GetClient(context.Background(), "broken")
	require.ErrorContains(t, err, "corrupt")
	_, err = s.ListClients(context.Background(), "", 10)
	require.ErrorContains(t, err, "corrupt")
}
