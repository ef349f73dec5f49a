package main

import (
	"context"
	"log/slog"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist"
)

// Turning hash_api_keys on erases the keys kept in clear from before, at
// start, and no answer but create's and rotate-key's shows a key (issue
// 12 item 12, SPEC 4).
func TestTurningHashAPIKeysOnErasesKeysKeptInClear(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			rec := newRecorder(t)
			cfg := baseConfig(t, rec.url)
			dsn := kind.setup(t, cfg)
			in := start(t, cfg)
			code, body := call(t, http.MethodPost, "http://"+in.addr+"/clients", "", `{"client_id":"old","capacity":100}`)
			require.Equal(t, http.StatusCreated, code, body)
			key := *decodeView(t, body).APIKey
			require.NoError(t, in.stop())

			setHashKeys(cfg, true)
			in = start(t, cfg)
			base := "http://" + in.addr
			code, body = call(t, http.MethodGet, base+"/clients/old", "", "")
			require.Equal(t, http.StatusOK, code, body)
			v := decodeView(t, body)
			assert.Nil(t, v.APIKey, "a GET shows no key in hashed mode: %s", body)
			require.NotNil(t, v.APIKeyPrefix, body)
			assert.Equal(t, key[:6], *v.APIKeyPrefix)
			code, _ = call(t, http.MethodGet, base+"/x", key, "")
			assert.Equal(t, http.StatusOK, code, "the key still works")
			require.NoError(t, in.stop())

			if dsn != "" {
				assert.Nil(t, pgStoredKey(t, dsn, "old").apiKey, "the clear key is erased from PostgreSQL")
				return
			}
			s, err := persist.OpenBolt(cfg["state_file"].(string), slog.New(slog.DiscardHandler))
			require.NoError(t, err)
			defer s.Close()
			c, err := s.GetClient(context.Background(), "old")
			require.NoError(t, err)
			assert.Empty(t, c.APIKey, "the clear key is erased from the embedded store")
		})
	}
}
