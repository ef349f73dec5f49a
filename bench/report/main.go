// Command report turns bench/peers.sh's results.tsv into a markdown table:
// per concurrency and target, the median over the rounds of requests per
// second (with its range), latency and server CPU per request, and the
// requests/s ratio to a base target taken within each round, so a round
// slowed by the machine moves both sides of the ratio.
package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strconv"
)

// run is one measured wrk run: one row of results.tsv.
type run struct {
	round, conns  int
	target        string
	rps           float64
	p50us, p99us  float64
	errors        float64
	cpuUSPerReq   float64
	foreignPctCPU float64
}

func main() {
	base := flag.String("base", "nginx", "target the ratio column divides by")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: report [-base nginx] results.tsv")
	}
	runs, err := load(flag.Arg(0))
	if err != nil {
		log.Fatal(err)
	}
	write(os.Stdout, runs, *base)
}

func load(path string) ([]run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.Comma = '\t'
	if _, err := r.Read(); err != nil { // header
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []run
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(rec) < 9 {
			return nil, fmt.Errorf("%s: short row %q", path, rec)
		}
		n := make([]float64, len(rec))
		for i, s := range rec {
			if i == 2 {
				continue // the target's name
			}
			if n[i], err = strconv.ParseFloat(s, 64); err != nil {
				return nil, fmt.Errorf("%s: column %d: %w", path, i+1, err)
			}
		}
		out = append(out, run{round: int(n[0]), conns: int(n[1]), target: rec[2], rps: n[3],
			p50us: n[4], p99us: n[5], errors: n[6], cpuUSPerReq: n[7], foreignPctCPU: n[8]})
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// write prints the table, targets in the order they first appear.
func write(w io.Writer, runs []run, base string) {
	var conns []int
	var targets []string
	baseRPS := map[[2]int]float64{} // round, conns → base req/s
	for _, r := range runs {
		if !slices.Contains(conns, r.conns) {
			conns = append(conns, r.conns)
		}
		if !slices.Contains(targets, r.target) {
			targets = append(targets, r.target)
		}
		if r.target == base {
			baseRPS[[2]int{r.round, r.conns}] = r.rps
		}
	}
	fmt.Fprintf(w, "| conns | target | req/s (median) | min–max | vs %s | p50 ms | p99 ms | server CPU µs/req | errors | foreign CPU %% |\n", base)
	fmt.Fprintln(w, "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, c := range conns {
		for _, t := range targets {
			var rps, p50, p99, cpu, ratio, foreign []float64
			var errs float64
			for _, r := range runs {
				if r.conns != c || r.target != t {
					continue
				}
				rps = append(rps, r.rps)
				p50 = append(p50, r.p50us/1000)
				p99 = append(p99, r.p99us/1000)
				cpu = append(cpu, r.cpuUSPerReq)
				foreign = append(foreign, r.foreignPctCPU)
				errs += r.errors
				if b := baseRPS[[2]int{r.round, c}]; b > 0 {
					ratio = append(ratio, r.rps/b)
				}
			}
			if len(rps) == 0 {
				continue
			}
			vs := "–"
			if len(ratio) > 0 {
				vs = fmt.Sprintf("%.2f×", median(ratio))
			}
			fmt.Fprintf(w, "| %d | %s | %.0f | %.0f–%.0f | %s | %.2f | %.2f | %.1f | %.0f | %.0f |\n",
				c, t, median(rps), slices.Min(rps), slices.Max(rps), vs, median(p50), median(p99),
				median(cpu), errs, median(foreign))
		}
	}
}
