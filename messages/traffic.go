package messages

import "time"

// TrafficRates is the main port's requests per second over a recent
// window, by the status the client got: one count per second in each
// series, oldest first, the last one for the second that ended at End.
type TrafficRates struct {
	End time.Time
	// Total counts every answered request; the classes split it; Status429
	// counts the refusals of rate limiting, also counted in Class4xx.
	Total, Class1xx, Class2xx, Class3xx, Class4xx, Class5xx, Status429 []uint64
}

// TopClient is one client of a top list by request count. The true count
// is within Error of Count (bounded-memory sketches estimate).
type TopClient struct {
	ClientID string
	Count    uint64
	Error    uint64
}
