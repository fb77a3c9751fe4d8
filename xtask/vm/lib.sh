# Steps every scenario shares; each scenario sources this file first, with SCENARIO set.
T=/sys/kernel/tracing
export DM_DISABLE_UDEV=1

# Counts dm_bufio calls with kprobes; tracing_on 0 keeps the hit counts without writing events.
# The _with_ioprio variants (dm-verity's, 6.9 on) are counted where the kernel has them.
count_bufio_calls() {
    echo 0 > $T/tracing_on
    for fn in dm_bufio_get dm_bufio_read dm_bufio_read_with_ioprio dm_bufio_release; do
        if grep -q " $fn\b" /proc/kallsyms; then
            echo "p:bufscope/$fn dm_bufio:$fn" >> $T/kprobe_events
        fi
    done
    echo 1 > $T/events/bufscope/enable
}

# Reports what the kernel offers, then records lock contention in the background (for at most
# $1 seconds) and returns once bufscope says it is recording: the workload starts after the
# probes are attached, however slowly this guest runs.
start_recording() {
    /bin/bufscope doctor --json > /results/doctor.json
    /bin/bufscope record -o "/results/$SCENARIO.bftrace" --duration "${1}s" 2> /results/record.log &
    recorder=$!
    until grep -q "^bufscope: recording" /results/record.log; do
        if ! kill -0 $recorder 2>/dev/null; then
            echo "BUFSCOPE-FAIL bufscope record exited before recording:"
            cat /results/record.log
            exit 1
        fi
        sleep 0.1
    done
    echo "BUFSCOPE-STEP recording"
}

# Stops the recording as soon as the workload is done (SIGINT, as Ctrl-C), then saves the
# counts, a summary and dm-bufio's parameters. The kprobe counts stop after the recording, so
# they cover every call it could have seen.
finish() {
    kill -INT $recorder
    wait $recorder
    echo 0 > $T/events/bufscope/enable
    cat $T/kprobe_profile > /results/kprobes.txt
    /bin/bufscope info "/results/$SCENARIO.bftrace" > /results/info.txt
    for p in /sys/module/dm_bufio/parameters/*; do echo "$(basename $p) $(cat $p)"; done > /results/dm_bufio.txt
    # "major:minor sectors" of every block device, to check recorded blocks against.
    for d in /sys/block/*; do echo "$(cat $d/dev) $(cat $d/size)"; done > /results/devices.txt
    echo "BUFSCOPE-STEP recorded"
    echo 0 > /tmp/scenario.rc
}
