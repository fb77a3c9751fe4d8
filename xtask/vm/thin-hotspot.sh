# thin-hotspot: a thin pool on loop devices, the volume provisioned first, then 16 readers of hot
# regions (btree lookups through dm_bufio_get) while a writer to the origin of a snapshot breaks
# sharing (the dirtier), all recorded by bufscope; dm_bufio calls counted with kprobes.
# Other scenarios reuse this one with SCENARIO set, after changing what they change.
SCENARIO=${SCENARIO:-thin-hotspot}
. /scenarios/lib.sh
cd /tmp

truncate -s 64M meta.img
truncate -s 160M data.img
losetup /dev/loop0 meta.img
losetup /dev/loop1 data.img
dd if=/dev/zero of=/dev/loop0 bs=4096 count=1 2>/dev/null
dmsetup create pool --table "0 $((160 * 2048)) thin-pool /dev/loop0 /dev/loop1 128 32768 1 skip_block_zeroing"
dmsetup message pool 0 "create_thin 0"
dmsetup create thin --table "0 $((96 * 2048)) thin /dev/mapper/pool 0"
dd if=/dev/zero of=/dev/mapper/thin bs=1M count=96 oflag=direct 2>/dev/null
echo "BUFSCOPE-STEP thin volume provisioned"
dmsetup suspend thin
dmsetup message pool 0 "create_snap 1 0"
dmsetup resume thin

count_bufio_calls
start_recording 12
workers=""
for i in $(seq 0 15); do
    dd if=/dev/mapper/thin of=/dev/null bs=4096 iflag=direct skip=$((i * 1024)) count=1024 2>/dev/null &
    workers="$workers $!"
done
dd if=/dev/urandom of=/dev/mapper/thin bs=4096 oflag=direct seek=20000 count=2048 2>/dev/null &
workers="$workers $!"
wait $workers
finish
