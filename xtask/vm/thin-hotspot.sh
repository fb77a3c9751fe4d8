# thin-hotspot: a thin pool on loop devices, the volume provisioned first, then 16 readers of hot
# regions (btree lookups through dm_bufio_get) while a writer to the origin of a snapshot breaks
# sharing (the dirtier), driven by `bufscope stress` and recorded by bufscope; dm_bufio calls
# counted with kprobes.
# Other scenarios reuse this one with SCENARIO set, after changing what they change.
SCENARIO=${SCENARIO:-thin-hotspot}
. /scenarios/lib.sh
provision_thin
dmsetup suspend thin
dmsetup message pool 0 "create_snap 1 0"
dmsetup resume thin

count_bufio_calls
# Owner stacks: what the holder of a contended root_lock or client mutex was doing (6.2+).
start_recording 120 --owner-stacks
# 16 readers of 4 MiB hot regions, and one writer over the whole volume breaking the snapshot's
# sharing: every write changes the pool's metadata btree (the dirtier).
/bin/bufscope stress /dev/mapper/thin --threads 16 --pattern hot --region-blocks 1024 \
    --writers 1 --allow-writes --duration 6s --json > /results/stress.json
finish
