package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The dashboard's tests drive Debian's Chromium, headless, through the
// DevTools protocol (chromedp) against a whole Tollgate on loopback. They
// skip when no Chromium is installed, unless REQUIRE_BROWSER=1 (CI) makes
// that a failure.

// browserWait bounds each wait for the page; the page itself refreshes
// every second, and -race on two busy cores slows everything.
const browserWait = 30 * time.Second

// chromiumPath finds the browser or skips the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("REQUIRE_BROWSER") == "1" {
		t.Fatal("REQUIRE_BROWSER=1 but no Chromium found on PATH (Debian: apt-get install chromium)")
	}
	t.Skip("no Chromium installed; set REQUIRE_BROWSER=1 to make this a failure")
	return ""
}

// browser is one headless Chromium with one tab, and what its console saw.
type browser struct {
	ctx context.Context

	mu      sync.Mutex
	console []string // errors and exceptions, as "type: text"
}

// newBrowser starts Chromium with a fresh profile; it stops with the test.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	profile, err := os.MkdirTemp("", "tollgate-chromium-")
	require.NoError(t, err)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox, // as root in a container there is no sandbox to use
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(1280, 1100),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
	)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{ctx: ctx}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = chromedp.Cancel(ctx) // closes the browser and waits for it
		cancel()
		cancelAlloc()
		wg.Wait()
		removeProfile(t, profile)
	})
	// Start the browser now, so its start-up is not charged to a wait.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	// Subscribed here, not in the goroutine, so no message sent before
	// the goroutine gets to run is missed.
	console := chromedp.Console(ctx)
	wg.Go(func() { // waited for in Cleanup; ends when ctx is canceled
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() || m.Type == chromedp.ConsoleWarning {
				b.mu.Lock()
				b.console = append(b.console, m.String())
				b.mu.Unlock()
			}
		}
	})
	return b
}

// removeProfile removes Chromium's profile; its helpers may still write
// there for a moment after the browser stopped.
func removeProfile(t *testing.T, dir string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil || time.Now().After(deadline) {
			assert.NoError(t, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *browser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// do runs actions, bounded by browserWait.
func (b *browser) do(t *testing.T, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, actions...))
}

// waitFor waits until the JavaScript expression is true in the page.
func (b *browser) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond)))
	require.NoError(t, err, "waiting for %s", what)
}

// setInput sets a form field as typing would end up, input event included.
// (chromedp.SetValue sets the property without the event.)
func (b *browser) setInput(t *testing.T, id, value string) {
	t.Helper()
	ok := eval[bool](t, b, `((el, v) => { if (!el) return false; el.value = v;
		el.dispatchEvent(new Event('input', {bubbles: true})); return true })(document.getElementById(`+
		jsString(id)+`), `+jsString(value)+`)`)
	require.True(t, ok, "no element #%s", id)
}

// eval returns the value of a JavaScript expression in the page.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(t, err, expr)
	return v
}

// probeInterval is the dashboards' health_check_interval: longer than the
// page's refresh (1 s), so "unhealthy within two probe intervals" is what
// the page shows, not only what the registry knows.
const probeInterval = 2 * time.Second

// pageRefresh is the dashboard's refresh period (REFRESH_MS in app.js):
// what the page may take to show what the registry knows.
const pageRefresh = time.Second

// dashboard is a running Tollgate with two backends, its admin API on its
// own port, and a browser on its dashboard.
type dashboard struct {
	in       *instance // the main port
	admin    *instance // the admin port
	url      string    // the admin port's /ui/
	backends []*liveBackend
	browser  *browser
}

func newDashboard(t *testing.T, adminKey string) *dashboard {
	t.Helper()
	browser := newBrowser(t)
	b1, b2 := newLiveBackend(t), newLiveBackend(t)
	cfg := baseConfig(t, b1.url, b2.url)
	setLB(cfg, map[string]any{"health_check_interval": probeInterval.Seconds(), "health_check_timeout": 1})
	if adminKey != "" {
		cfg = withAdminKey(t, cfg, adminKey)
	} else {
		t.Setenv("TOLLGATE_ADMIN_KEY", "")
	}
	in := start(t, cfg, "-admin-addr", "127.0.0.1:0")
	admin := in.admin(t)
	return &dashboard{in: in, admin: admin, url: "http://" + admin.addr + "/ui/", backends: []*liveBackend{b1, b2}, browser: browser}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string { return fmt.Sprintf("%q", s) }

const (
	healthyRows   = `document.querySelectorAll('#backends tr[data-healthy="true"]').length`
	unhealthyRows = `document.querySelectorAll('#backends tr[data-healthy="false"]').length`
)

func clientRow(id string) string {
	return `document.querySelector('#clients tr[data-client=` + jsString(id) + `]')`
}

// TestDashboardInBrowser walks the dashboard as an operator would, in
// loopback mode (no admin key).
func TestDashboardInBrowser(t *testing.T) {
	d := newDashboard(t, "")
	b := d.browser
	b.do(t, chromedp.Navigate(d.url))

	t.Run("both backends healthy", func(t *testing.T) {
		b.waitFor(t, "two healthy backends", healthyRows+` === 2`)
	})

	t.Run("create a client through the form and see it listed", func(t *testing.T) {
		b.do(t,
			chromedp.SendKeys(chromedp.ID("create-id"), "web-shop"),
			chromedp.SendKeys(chromedp.ID("create-rate"), "5"),
			chromedp.SendKeys(chromedp.ID("create-capacity"), "20"),
			chromedp.Click(chromedp.CSS(`#create-form button[type=submit]`)),
		)
		b.waitFor(t, "the client listed", clientRow("web-shop")+` !== null`)
		b.waitFor(t, "the new key shown once", `!document.getElementById('new-key').hidden`)
		key := eval[string](t, b, `document.getElementById('new-key-value').textContent`)
		assert.GreaterOrEqual(t, len(key), 32, "a generated key")
		got := d.admin.getClient(t, newHTTPClient(t), "web-shop")
		assert.Equal(t, key, got.APIKey, "the page shows the stored key")
		assert.Equal(t, int64(20), got.Capacity)
	})

	t.Run("change its capacity", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.CSS(`#clients tr[data-client="web-shop"] button[data-action=edit]`)))
		b.waitFor(t, "the edit dialog", `document.getElementById('edit-dialog').open`)
		b.setInput(t, "edit-capacity", "7")
		b.do(t, chromedp.Click(chromedp.ID("edit-save")))
		b.waitFor(t, "the new capacity listed", clientRow("web-shop")+`?.dataset.capacity === "7"`)
		assert.Equal(t, int64(7), d.admin.getClient(t, newHTTPClient(t), "web-shop").Capacity)
	})

	t.Run("traffic and top clients", func(t *testing.T) {
		hc := newHTTPClient(t)
		shop := d.admin.getClient(t, hc, "web-shop").APIKey // capacity 7: some refused
		app := d.admin.createClient(t, hc, "mobile-app", 50, 100).APIKey
		for range 12 { // a burst past its capacity of 7
			_, err := d.in.forward(hc, shop, "/", nil)
			require.NoError(t, err)
		}
		// A few seconds of traffic, so the chart has a shape.
		for i := range 24 {
			_, err := d.in.forward(hc, app, "/", nil)
			require.NoError(t, err)
			time.Sleep(time.Duration(50+i*5) * time.Millisecond) // spreads requests over seconds; waits for nothing
		}
		b.waitFor(t, "web-shop among the top refused",
			`[...document.querySelectorAll('#top-refused td')].some(td => td.textContent === "web-shop")`)
		b.waitFor(t, "mobile-app first among the top admitted",
			`document.querySelector('#top-admitted td')?.textContent === "mobile-app"`)
		b.waitFor(t, "requests on the traffic chart",
			`document.querySelector('#traffic [data-series="total"] .muted')?.textContent !== "peak 0/s"`)
	})

	t.Run("search by id prefix", func(t *testing.T) {
		b.do(t, chromedp.SendKeys(chromedp.ID("search"), "mob"))
		b.waitFor(t, "only mobile-app listed",
			clientRow("web-shop")+` === null && `+clientRow("mobile-app")+` !== null`)
		b.setInput(t, "search", "w")
		b.waitFor(t, "only web-shop listed",
			clientRow("mobile-app")+` === null && `+clientRow("web-shop")+` !== null`)
		b.setInput(t, "search", "")
		b.waitFor(t, "both listed", clientRow("mobile-app")+` !== null && `+clientRow("web-shop")+` !== null`)
	})

	t.Run("rotate a key with confirmation", func(t *testing.T) {
		hc := newHTTPClient(t)
		old := d.admin.getClient(t, hc, "mobile-app").APIKey
		b.do(t, chromedp.Click(chromedp.CSS(`#clients tr[data-client="mobile-app"] button[data-action=rotate]`)))
		b.waitFor(t, "the confirmation", `document.getElementById('confirm-dialog').open`)
		b.do(t, chromedp.Click(chromedp.ID("confirm-yes")))
		b.waitFor(t, "the new key shown", `document.getElementById('new-key-client').textContent === "mobile-app"`)
		shown := eval[string](t, b, `document.getElementById('new-key-value').textContent`)
		assert.NotEqual(t, old, shown)
		assert.Equal(t, shown, d.admin.getClient(t, hc, "mobile-app").APIKey)
	})

	t.Run("screenshot", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(b.ctx, browserWait)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")), "a PNG")
		if dir := os.Getenv("DASHBOARD_SCREENSHOT_DIR"); dir != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "dashboard.png"), png, 0o644))
		}
	})

	t.Run("a stopped backend turns unhealthy within two probe intervals", func(t *testing.T) {
		// The page notes by its own clock when it first shows the backend
		// unhealthy, and the time is measured from just before the kill:
		// how slowly the test's polls and CDP round trips run under -race
		// is then not charged to Tollgate, while the whole path (probe,
		// registry, /backends, the page's refresh) still is.
		require.True(t, eval[bool](t, b, `(() => {
			window.tgUnhealthyAt = 0;
			const seen = () => { if (!window.tgUnhealthyAt && `+unhealthyRows+` === 1) window.tgUnhealthyAt = performance.now(); };
			new MutationObserver(seen).observe(document.getElementById('backends'), {subtree: true, childList: true, attributes: true});
			window.tgKilledAt = performance.now();
			return true })()`))
		d.backends[1].kill()
		b.waitFor(t, "the page to show the stopped backend unhealthy", `window.tgUnhealthyAt > 0`)
		took := time.Duration(eval[float64](t, b, `window.tgUnhealthyAt - window.tgKilledAt`) * float64(time.Millisecond))
		t.Logf("shown unhealthy %v after the kill", took)
		assert.LessOrEqual(t, took, 2*probeInterval+pageRefresh,
			"shown unhealthy within two probe intervals and a page refresh")
		assert.Equal(t, int64(1), eval[int64](t, b, unhealthyRows))
		assert.Equal(t, int64(1), eval[int64](t, b, healthyRows))
	})

	t.Run("delete with confirmation", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.CSS(`#clients tr[data-client="web-shop"] button[data-action=delete]`)))
		b.waitFor(t, "the confirmation", `document.getElementById('confirm-dialog').open`)
		b.do(t, chromedp.Click(chromedp.ID("confirm-yes")))
		b.waitFor(t, "the client gone", clientRow("web-shop")+` === null`)
	})

	t.Run("no console errors", func(t *testing.T) {
		assert.Empty(t, b.consoleErrors())
	})
}

// TestDashboardSignIn: with an admin key, the page asks for it, keeps it
// in sessionStorage only, and refuses a wrong one.
func TestDashboardSignIn(t *testing.T) {
	const adminKey = "dashboard-admin-key-0123456789"
	d := newDashboard(t, adminKey)
	b := d.browser
	b.do(t, chromedp.Navigate(d.url))
	b.waitFor(t, "the sign-in form", `!document.getElementById('sign-in').hidden`)
	assert.True(t, eval[bool](t, b, `document.getElementById('main').hidden`), "no data without the key")

	t.Run("a wrong key is refused", func(t *testing.T) {
		b.do(t,
			chromedp.SendKeys(chromedp.ID("admin-key"), "not-the-key-0123456789"),
			chromedp.Click(chromedp.CSS(`#sign-in-form button[type=submit]`)),
		)
		b.waitFor(t, "the refusal", `document.getElementById('sign-in-error').textContent.includes('refused')`)
		assert.True(t, eval[bool](t, b, `document.getElementById('main').hidden`))
		assert.Nil(t, eval[any](t, b, `sessionStorage.getItem('tollgate.adminKey')`), "a refused key is not kept")
	})

	t.Run("the right key signs in", func(t *testing.T) {
		b.do(t,
			chromedp.SendKeys(chromedp.ID("admin-key"), adminKey),
			chromedp.Click(chromedp.CSS(`#sign-in-form button[type=submit]`)),
		)
		b.waitFor(t, "the dashboard", `!document.getElementById('main').hidden && `+healthyRows+` === 2`)
		assert.Equal(t, adminKey, eval[string](t, b, `sessionStorage.getItem('tollgate.adminKey')`))
		assert.Empty(t, eval[string](t, b, `document.cookie`), "no cookie")
		assert.Zero(t, eval[int](t, b, `localStorage.length`), "nothing in localStorage")
		assert.False(t, strings.Contains(eval[string](t, b, `location.href`), adminKey), "never in a URL")
	})

	t.Run("sign out forgets the key", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.ID("sign-out")))
		b.waitFor(t, "the sign-in form", `!document.getElementById('sign-in').hidden`)
		assert.Nil(t, eval[any](t, b, `sessionStorage.getItem('tollgate.adminKey')`))
	})

	// The only console errors are the browser's notes of the 401 answers
	// the sign-in flow is made of.
	for _, e := range b.consoleErrors() {
		assert.Contains(t, e, "401", "unexpected console message")
	}
}
