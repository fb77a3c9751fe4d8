# probe-cost: what probing dm-bufio costs the workload it measures, all in one boot.
# Part 1: 16 readers of hot regions of a thin volume (no writer: every run does the same work)
# run alone, under `bufscope record` (fentry/fexit), under `record --ring-wakeup each` (the
# kernel's default wakeups), under `record --bufio-probes kprobe`, under `live --no-tui`, and
# under the kernel's own function_graph tracer on the same dm-bufio functions (no BPF: what any
# tool pays to see every call and return of them here), in turns (the order rotating), for three
# rounds after a warm-up. Each run's driver report is /results/cost-<how>-<round>.json.
# Part 2 (where the test module is built for the kernel): the seed's experiment
# (/fixtures/bufio_hotspot.ko, as in bufio-hotspot.sh) alone, under `record`, under
# `record --no-bufio` (lock waits only), under `live --no-tui` and under function_graph, two
# rounds; the module's own lines, with each hotspot thread's time inside dm_bufio_read, are
# /results/seed-<how>-<round>.txt.
# `cargo xtask bench` compares them.
SCENARIO=probe-cost
. /scenarios/lib.sh
provision_thin

# The functions bufscope probes (kernel.rs's compatibility table), for function_graph.
GRAPH_FUNCTIONS="dm_bufio_get dm_bufio_read dm_bufio_read_with_ioprio dm_bufio_new
    dm_bufio_prefetch dm_bufio_prefetch_with_ioprio dm_bufio_release dm_bufio_mark_buffer_dirty
    dm_bufio_mark_partial_buffer_dirty dm_bufio_write_dirty_buffers_async
    dm_bufio_write_dirty_buffers dm_bufio_forget dm_bufio_forget_buffers dm_bufio_client_create
    dm_bufio_client_destroy dm_bufio_lock dm_bufio_unlock __link_buffer __bufio_new"

workload() {
    /bin/bufscope stress /dev/mapper/thin --threads 16 --pattern hot --region-blocks 1024 \
        --duration 4s --json > "$1"
}

# Starts probe $1 (record, wake-each, kprobe, live, nobufio, graph) in the background; returns
# once it is attached. `none` starts nothing.
probe_start() {
    probe=
    case $1 in
    none) return ;;
    graph)
        echo nop > $T/current_tracer
        : > $T/set_ftrace_filter
        for fn in $GRAPH_FUNCTIONS; do
            if grep -q "^$fn\b" $T/available_filter_functions; then
                echo "$fn" >> $T/set_ftrace_filter
            fi
        done
        echo function_graph > $T/current_tracer
        echo 1 > $T/tracing_on
        return
        ;;
    record) set -- record ;;
    wake-each) set -- record --ring-wakeup each ;;
    kprobe) set -- record --bufio-probes kprobe ;;
    nobufio) set -- record --no-bufio ;;
    live)
        /bin/bufscope live --no-tui --duration 900s > /dev/null 2> /tmp/probe.log &
        probe=$!
        wait_for_line /tmp/probe.log "bufscope live:" $probe
        probe_nice
        return
        ;;
    esac
    /bin/bufscope "$@" -o /tmp/cost.bftrace --force --duration 900s 2> /tmp/probe.log &
    probe=$!
    wait_for_line /tmp/probe.log "bufscope: recording" $probe
    probe_nice
}

# Under a workload of 17 busy threads the recorder runs at nice -10, as bufio-hotspot.sh's does.
probe_nice() {
    if [ -n "$PROBE_NICE" ]; then
        for task in /proc/$probe/task/*; do
            renice -n "$PROBE_NICE" -p "${task##*/}" > /dev/null
        done
    fi
}

# Stops probe $1, keeping its messages in /results/probe-$1.log.
probe_stop() {
    if [ "$1" = graph ]; then
        echo 0 > $T/tracing_on
        echo nop > $T/current_tracer
        : > $T/set_ftrace_filter
        return
    fi
    [ -n "$probe" ] || return 0
    kill -INT $probe
    wait $probe
    cat /tmp/probe.log >> "/results/probe-$1.log"
    rm -f /tmp/cost.bftrace
}

# Runs `$1 FILE` under each probe of each round's order (the arguments after $3, one per round),
# FILE being /results/$2-<how>-<round>.$3.
in_rounds() {
    run=$1 prefix=$2 ext=$3
    shift 3
    round=0
    for order in "$@"; do
        round=$((round + 1))
        for how in $order; do
            probe_start $how
            $run "/results/$prefix-$how-$round.$ext"
            probe_stop $how
            echo "BUFSCOPE-STEP $prefix round $round $how"
        done
    done
}

workload /tmp/warm-up.json
# Each round starts one later in the list, so that no probe always follows the same one.
in_rounds workload cost json \
    "none record wake-each kprobe live graph" \
    "record wake-each kprobe live graph none" \
    "wake-each kprobe live graph none record"

if [ -f /fixtures/bufio_hotspot.ko ]; then
    dmsetup remove thin
    dmsetup remove pool
    losetup -d /dev/loop0
    losetup -d /dev/loop1
    rm -f /tmp/meta.img /tmp/data.img
    # As bufio-hotspot.sh sets it up.
    truncate -s 256M /tmp/hot.img
    losetup /dev/loop0 /tmp/hot.img
    dd if=/dev/zero of=/dev/loop0 bs=1M count=256 2>/dev/null
    echo $((96 << 20)) > /sys/module/dm_bufio/parameters/max_cache_size_bytes
    seed_run() {
        dmesg -c > /dev/null
        insmod /fixtures/bufio_hotspot.ko dev=/dev/loop0 threads=16 region_blocks=1024 passes=16
        dmesg | grep "bufio_hotspot: " | sed 's/^.*bufio_hotspot: /bufio_hotspot: /' > "$1"
        rmmod bufio_hotspot
    }
    seed_run /tmp/seed-warm-up.txt
    PROBE_NICE=-10
    in_rounds seed_run seed txt "none record nobufio live graph" "graph live nobufio record none"
fi
echo 0 > /tmp/scenario.rc
