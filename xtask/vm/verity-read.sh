# verity-read: dm-verity over loop devices, read at random by 16 concurrent readers, so every
# data block's verification reads its hash block through dm-bufio (hits once the cache is warm).
# veritysetup only formats (files, no device-mapper); the device is made with dmsetup.
# Other scenarios reuse this one with SCENARIO set, and VERITY_OPTIONS for the table's optional
# arguments ("COUNT ARG...").
SCENARIO=${SCENARIO:-verity-read}
. /scenarios/lib.sh
cd /tmp

dd if=/dev/urandom of=data.img bs=1M count=64 2>/dev/null
truncate -s 4M hash.img
mkdir -p /run/cryptsetup
veritysetup format data.img hash.img > format.txt
field() { sed -n "s/^$1:[[:space:]]*//p" format.txt; }
blocks=$(field "Data blocks")
losetup -r /dev/loop0 data.img
losetup -r /dev/loop1 hash.img
# Hash start block 1: veritysetup put its superblock in block 0 of the hash device.
table="0 $((blocks * 8)) verity 1 /dev/loop0 /dev/loop1 4096 4096 $blocks 1 sha256 $(field "Root hash") $(field Salt)${VERITY_OPTIONS:+ $VERITY_OPTIONS}"
dmsetup create vdev --readonly --table "$table" || { echo "BUFSCOPE-FAIL verity table: $table"; dmesg | tail -3; exit 1; }
echo "BUFSCOPE-STEP verity device ready ($blocks blocks)"

count_bufio_calls
start_recording 120
/bin/bufscope stress /dev/mapper/vdev --threads 16 --pattern random --duration 6s --json \
    > /results/stress.json
finish
