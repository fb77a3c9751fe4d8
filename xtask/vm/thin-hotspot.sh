# thin-hotspot: a thin pool on loop devices, the volume provisioned first, then 16 readers of hot
# regions (btree lookups through dm_bufio_get) while a writer to the origin of a snapshot breaks
# sharing (the dirtier), driven by `bufscope stress` and recorded by bufscope; dm_bufio calls
# counted with kprobes.
# Other scenarios reuse this one with SCENARIO set, after changing what they change.
SCENARIO=${SCENARIO:-thin-hotspot}
. /scenarios/lib.sh
cd /tmp

truncate -s 64M meta.img
# Room for the volume twice over: the writer may unshare every block of the snapshot.
truncate -s 256M data.img
losetup /dev/loop0 meta.img
losetup /dev/loop1 data.img
dd if=/dev/zero of=/dev/loop0 bs=4096 count=1 2>/dev/null
dmsetup create pool --table "0 $((256 * 2048)) thin-pool /dev/loop0 /dev/loop1 128 32768 1 skip_block_zeroing"
dmsetup message pool 0 "create_thin 0"
dmsetup create thin --table "0 $((96 * 2048)) thin /dev/mapper/pool 0"
dd if=/dev/zero of=/dev/mapper/thin bs=1M count=96 oflag=direct 2>/dev/null
echo "BUFSCOPE-STEP thin volume provisioned"
dmsetup suspend thin
dmsetup message pool 0 "create_snap 1 0"
dmsetup resume thin

count_bufio_calls
start_recording 120
# 16 readers of 4 MiB hot regions, and one writer over the whole volume breaking the snapshot's
# sharing: every write changes the pool's metadata btree (the dirtier).
/bin/bufscope stress /dev/mapper/thin --threads 16 --pattern hot --region-blocks 1024 \
    --writers 1 --allow-writes --duration 6s --json > /results/stress.json
finish
