# Steps every scenario shares; each scenario sources this file first, with SCENARIO set.
T=/sys/kernel/tracing
export DM_DISABLE_UDEV=1

# Counts dm_bufio calls with kprobes; tracing_on 0 keeps the hit counts without writing events.
# The _with_ioprio variants (dm-verity's, 6.9 on) are counted where the kernel has them, and
# do_global_cleanup, dm-bufio's background eviction.
count_bufio_calls() {
    echo 0 > $T/tracing_on
    for fn in dm_bufio_get dm_bufio_read dm_bufio_read_with_ioprio dm_bufio_release \
        do_global_cleanup; do
        if grep -q " $fn\b" /proc/kallsyms; then
            echo "p:bufscope/$fn dm_bufio:$fn" >> $T/kprobe_events
        fi
    done
    echo 1 > $T/events/bufscope/enable
}

# A thin pool on loop devices and a 96 MiB thin volume in it, written once so that every block
# is provisioned: /dev/mapper/thin.
provision_thin() {
    cd /tmp
    truncate -s 64M meta.img
    # Room for the volume twice over: a writer may unshare every block of a snapshot.
    truncate -s 256M data.img
    losetup /dev/loop0 meta.img
    losetup /dev/loop1 data.img
    dd if=/dev/zero of=/dev/loop0 bs=4096 count=1 2>/dev/null
    dmsetup create pool --table "0 $((256 * 2048)) thin-pool /dev/loop0 /dev/loop1 128 32768 1 skip_block_zeroing"
    dmsetup message pool 0 "create_thin 0"
    dmsetup create thin --table "0 $((96 * 2048)) thin /dev/mapper/pool 0"
    dd if=/dev/zero of=/dev/mapper/thin bs=1M count=96 oflag=direct 2>/dev/null
    echo "BUFSCOPE-STEP thin volume provisioned"
}

# Waits until file $1 has a line starting with $2, written by process $3; fails the scenario,
# with the file, if the process exits first.
wait_for_line() {
    until grep -q "^$2" "$1"; do
        if ! kill -0 "$3" 2>/dev/null; then
            echo "BUFSCOPE-FAIL waiting for \"$2\" in $1, but its writer exited:"
            cat "$1"
            exit 1
        fi
        sleep 0.1
    done
}

# Reports what the kernel offers, then records lock contention in the background (for at most
# $1 seconds; further arguments go to bufscope record, RECORD_NICE sets its nice value) and
# returns once bufscope says it is recording: the workload starts after the probes are attached,
# however slowly this guest runs.
start_recording() {
    seconds=$1
    shift
    /bin/bufscope doctor --json > /results/doctor.json
    /bin/bufscope record -o "/results/$SCENARIO.bftrace" --duration "${seconds}s" "$@" \
        2> /results/record.log &
    recorder=$!
    wait_for_line /results/record.log "bufscope: recording" $recorder
    if [ -n "$RECORD_NICE" ]; then
        # busybox has renice, not nice; a nice value is per thread, so every thread's.
        for task in /proc/$recorder/task/*; do
            renice -n "$RECORD_NICE" -p "${task##*/}" > /dev/null
        done
    fi
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
