# gnuplot: noop jobs/s and latency against concurrency, one line per model.
# Call: gnuplot -e "datafile='.../sweep.dat'; outdir='...'" bench/plots.gp
# sweep.dat holds two blocks (index 0: thread, 1: process): concurrency jobs_per_s p50_ms p99_ms.
set terminal pngcairo size 800,500 font ",10"
set grid
set key top left
set logscale x 2
set xlabel "connections (each one job at a time, Prefer: wait)"

set output outdir."/throughput.png"
set title "noop jobs end to end: throughput against concurrency"
set ylabel "jobs/s"
set yrange [0:*]
plot datafile index 0 using 1:2 with linespoints lw 2 lc rgb "#1f77b4" title "thread model", \
     datafile index 1 using 1:2 with linespoints lw 2 lc rgb "#d62728" title "process model"

set output outdir."/latency.png"
set title "noop jobs end to end: latency against concurrency"
set ylabel "ms"
set logscale y 10
set yrange [*:*]
plot datafile index 0 using 1:3 with linespoints lw 2 lc rgb "#1f77b4" title "thread p50", \
     datafile index 0 using 1:4 with linespoints lw 2 lc rgb "#1f77b4" dt 2 title "thread p99", \
     datafile index 1 using 1:3 with linespoints lw 2 lc rgb "#d62728" title "process p50", \
     datafile index 1 using 1:4 with linespoints lw 2 lc rgb "#d62728" dt 2 title "process p99"
