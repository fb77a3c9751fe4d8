# small-cache: thin-hotspot with dm-bufio's cache shrunk to 64 KiB (16 metadata blocks, less than
# the pool's btree), forcing misses, evictions and writeback under the client mutex.
echo $((64 << 10)) > /sys/module/dm_bufio/parameters/max_cache_size_bytes
SCENARIO=small-cache . /scenarios/thin-hotspot.sh
