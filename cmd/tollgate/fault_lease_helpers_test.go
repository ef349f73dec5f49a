package main

// faultFailedWrites counts the instance's failed writes of bucket state:
// failed saves, or with leases (PostgreSQL, SPEC 9) the renewal failures
// that put it in store-down mode, which is where its admissions then wait
// to be reported.
func faultFailedWrites(in *instance) int {
	return len(in.logs.lines("save failed; will retry")) +
		len(in.logs.lines("store unreachable: spending leases, then store_down_policy"))
}
