# verity-nosleep: verity-read with dm-verity's optional `try_verify_in_tasklet`, which makes its
# dm-bufio client a no-sleep one (DM_BUFIO_CLIENT_NO_SLEEP): the client lock is a spinlock taken
# with bottom halves off, and (6.4+) the tree locks are rwlocks. The guest has 4 vCPUs (qemu.rs:
# a spinlock wait is traced only behind another spinning waiter).
VERITY_OPTIONS="1 try_verify_in_tasklet"
SCENARIO=verity-nosleep . /scenarios/verity-read.sh
