# probe-cost: what probing dm-bufio costs the workload it measures, all in one boot. 16 readers
# of hot regions of a thin volume (no writer: every run does the same work) run alone, under
# `bufscope record` (fentry/fexit), under `record --ring-wakeup each` (the kernel's default
# wakeups), under `record --bufio-probes kprobe` and under `live --no-tui`, in turns (the order rotating), for three rounds after a warm-up. Each run's driver report is
# /results/cost-<how>-<round>.json; `cargo xtask bench` compares them.
SCENARIO=probe-cost
. /scenarios/lib.sh
provision_thin

workload() {
    /bin/bufscope stress /dev/mapper/thin --threads 16 --pattern hot --region-blocks 1024 \
        --duration 4s --json > "$1"
}

# Runs the workload under probe $1 (none, record, wake-each, kprobe, live), its report to $2.
under() {
    case $1 in
    none)
        workload "$2"
        return
        ;;
    record)
        /bin/bufscope record -o /tmp/cost.bftrace --force --duration 300s 2> /tmp/probe.log &
        ready="bufscope: recording"
        ;;
    wake-each)
        /bin/bufscope record -o /tmp/cost.bftrace --force --duration 300s \
            --ring-wakeup each 2> /tmp/probe.log &
        ready="bufscope: recording"
        ;;
    kprobe)
        /bin/bufscope record -o /tmp/cost.bftrace --force --duration 300s \
            --bufio-probes kprobe 2> /tmp/probe.log &
        ready="bufscope: recording"
        ;;
    live)
        /bin/bufscope live --no-tui --duration 300s > /dev/null 2> /tmp/probe.log &
        ready="bufscope live:"
        ;;
    esac
    probe=$!
    wait_for_line /tmp/probe.log "$ready" $probe
    workload "$2"
    kill -INT $probe
    wait $probe
    cat /tmp/probe.log >> "/results/probe-$1.log"
    rm -f /tmp/cost.bftrace
}

workload /tmp/warm-up.json
# Each round starts one later in the list, so that no probe always follows the same one.
for round in 1 2 3; do
    case $round in
    1) order="none record wake-each kprobe live" ;;
    2) order="record wake-each kprobe live none" ;;
    3) order="wake-each kprobe live none record" ;;
    esac
    for how in $order; do
        under $how "/results/cost-$how-$round.json"
        echo "BUFSCOPE-STEP round $round $how"
    done
done
echo 0 > /tmp/scenario.rc
