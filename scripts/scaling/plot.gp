# SPDX-License-Identifier: MIT
# Throughput and decode step time vs ranks: the planner's predictions (best layout per rank count as
# a line, every layout as dots) and measured points next to the prediction for the same layout.
# Inputs are the .dat series written by sweep.py into `dir`:
#   gnuplot -e "dir='build/scaling'; out='build/scaling/scaling.png'; term='pngcairo size 1100,500'; title='...'" plot.gp
if (!exists("term")) term = "pngcairo size 1100,500"
if (!exists("title")) title = "v4rt scaling"
eval "set terminal ".term
set output out
set datafile missing "NaN"
set multiplot layout 1,2 title title
set logscale x 2
set grid
set key top left
set xlabel "ranks (GPUs)"
set ylabel "decode tokens/s"
plot dir."/predicted_all.dat" using 1:3 with points pt 7 ps 0.5 lc rgb "#aaaaaa" title "predicted (every layout)", \
     dir."/predicted_best.dat" using 1:3 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "predicted (best layout)", \
     dir."/predicted_for_measured.dat" using 1:3 with points pt 6 ps 1.6 lc rgb "#2ca02c" title "predicted (measured layouts)", \
     dir."/measured.dat" using 1:3 with points pt 5 ps 1.2 lc rgb "#d62728" title "measured"
set ylabel "decode step (ms)"
set key top right
plot dir."/predicted_all.dat" using 1:2 with points pt 7 ps 0.5 lc rgb "#aaaaaa" title "predicted (every layout)", \
     dir."/predicted_best.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "predicted (best layout)", \
     dir."/predicted_for_measured.dat" using 1:2 with points pt 6 ps 1.6 lc rgb "#2ca02c" title "predicted (measured layouts)", \
     dir."/measured.dat" using 1:2 with points pt 5 ps 1.2 lc rgb "#d62728" title "measured"
unset multiplot
