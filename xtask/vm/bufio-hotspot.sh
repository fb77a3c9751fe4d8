# bufio-hotspot: the experiment of dm-bufio's 6.4 rework, driven by the test module
# (/fixtures/bufio_hotspot.ko, source in xtask/vm/bufio-hotspot/): a dm-bufio client on a loop
# device, 16 kernel threads each reading and releasing its own 1,024-block region over and over,
# and one thread dirtying the whole device meanwhile. Loading the module runs it once and returns
# when it is done; each thread prints its own acquisitions and time (the ground truth).
# Run twice: alone (nothing attached: the kernel's own figure), then recorded by bufscope with
# dm_bufio calls counted by kprobes.
SCENARIO=bufio-hotspot
. /scenarios/lib.sh
cd /tmp
# 256 MiB: the 16 regions need 64 MiB; the dirtier goes over all of it, again and again. Written
# once, so reads of it cost the same in both runs.
truncate -s 256M hot.img
losetup /dev/loop0 hot.img
dd if=/dev/zero of=/dev/loop0 bs=1M count=256 2>/dev/null
# A cache of 96 MiB: every hotspot region fits, with 32 MiB to spare, so the dirtier's stream
# through the whole device keeps evicting (and writing back) its own dirty buffers, as in the
# experiment of the 6.4 rework, where writeback under 6.1's client mutex stalled the readers.
echo $((96 << 20)) > /sys/module/dm_bufio/parameters/max_cache_size_bytes
PARAMS="dev=/dev/loop0 threads=16 region_blocks=1024 passes=16"

# Loads the module (it returns when the experiment is done), keeps its lines in $1, unloads it.
hotspot_run() {
    dmesg -c > /dev/null
    insmod /fixtures/bufio_hotspot.ko $PARAMS
    dmesg | grep "bufio_hotspot: " | sed 's/^.*bufio_hotspot: /bufio_hotspot: /' > "$1"
    rmmod bufio_hotspot
    if ! grep -q "^bufio_hotspot: done .* errors=0" "$1"; then
        echo "BUFSCOPE-FAIL the module reported errors:"
        cat "$1"
        exit 1
    fi
}

hotspot_run /results/module-alone.txt
echo "BUFSCOPE-STEP the experiment alone"
count_bufio_calls
# 17 busy kernel threads leave the recorder 1/18th of two CPUs, too little to read 100k events
# a second under emulation: at nice 0 with 32 MiB of ring buffer, 6.1 lost 15 % of them (counted).
# So the recorder runs at nice -10 with 64 MiB, as one would run it on a machine this busy.
RECORD_NICE=-10 start_recording 900 --ringbuf-size $((64 << 20))
hotspot_run /results/module-recorded.txt
finish
