# Draws the stock-vs-Brisk ratios of one benchmark run as horizontal bars.
# bench/run.sh calls it as
#   gnuplot -e "datafile='x.dat'; outfile='y.png'; charttitle='...'; nrows=N" bench/chart.gp
# (optionally xmin=..., xmax=... for the axis) where each line of datafile is  label<TAB>ratio  (ratio = Brisk/stock of a
# figure where higher is better, so above 1 means Brisk is better).  The x
# axis is logarithmic so that 2x faster and 2x slower look the same size;
# every bar starts at 1 (no difference) and is green for a gain, red for a loss.

if (!exists("datafile")) datafile = "bench/results/latest.dat"
if (!exists("outfile")) outfile = "bench/results/latest.png"
if (!exists("charttitle")) charttitle = "Brisk vs stock Prosody"
if (!exists("nrows")) nrows = 10
if (!exists("xmin")) xmin = 0.25
if (!exists("xmax")) xmax = 16

set terminal pngcairo size 1100, (160 + 28 * nrows) font "sans,10"
set output outfile
set termoption noenhanced   # labels are plain text: "xml_parse" must not become a subscript
set datafile separator "\t"
set title charttitle
set logscale x 2
set xrange [xmin:xmax]
set xtics ("1/64" 1.0/64, "1/32" 1.0/32, "1/16" 1.0/16, "1/8" 0.125, "1/4" 0.25, "1/2" 0.5, "1 (same)" 1, \
           "2x" 2, "4x" 4, "8x" 8, "16x" 16, "32x" 32, "64x" 64, "128x" 128)
set xlabel "Brisk / stock (higher is better; log scale)"
set yrange [nrows - 0.3:-0.7]
set ytics scale 0 font "sans,9"
set grid xtics
set key off
set style fill solid 0.8 noborder
set arrow from 1, graph 0 to 1, graph 1 nohead lw 2 lc rgb "#444444"

clamp(r) = r < xmin * 1.02 ? xmin * 1.02 : (r > xmax * 0.98 ? xmax * 0.98 : r)
lo(r) = clamp(r) < 1 ? clamp(r) : 1
hi(r) = clamp(r) < 1 ? 1 : clamp(r)
colour(r) = r >= 1 ? 0x2e8b57 : 0xcd3333

plot datafile using (clamp($2)):0:(lo($2)):(hi($2)):($0 - 0.35):($0 + 0.35):(colour($2)):ytic(1) \
        with boxxyerror lc rgb variable, \
     datafile using (hi($2)):0:(sprintf(" %.2fx", $2)) with labels left font "sans,9"
