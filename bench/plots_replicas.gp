# gnuplot: speed-up of each scenario-8 workload over 1 replica, against the linear ideal.
# Call: gnuplot -e "datafile='.../replicas.dat'; outdir='...'" bench/plots_replicas.gp
# replicas.dat: replicas ideal machine_burn noop noop_drain burn (each a speed-up over 1 replica).
set terminal pngcairo size 800,500 font ",10"
set grid
set key top left
set xlabel "replicas sharing one PostgreSQL (all on the same 2 cores)"
set xtics 1
set ylabel "jobs/s, relative to 1 replica"
set yrange [0:*]
set output outdir."/replicas.png"
set title "Replicas on PostgreSQL: speed-up over 1 replica"
plot datafile using 1:2 with lines lw 1 lc rgb "#7f7f7f" dt 2 title "ideal (linear)", \
     datafile using 1:3 with lines lw 2 lc rgb "#98df8a" dt 3 title "burn: machine ceiling (2 cores)", \
     datafile using 1:4 with linespoints lw 2 lc rgb "#1f77b4" title "noop end to end (Prefer: wait)", \
     datafile using 1:5 with linespoints lw 2 lc rgb "#ff7f0e" title "noop drained", \
     datafile using 1:6 with linespoints lw 2 lc rgb "#2ca02c" title "burn 10 ms drained"
