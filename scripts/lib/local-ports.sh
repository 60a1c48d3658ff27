# TCP ports on 127.0.0.1 for the benchmark scripts; sourced, not run.

# Whether something accepts connections on port $1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a port nothing answers on, or fails.
free_local_port() {
    local candidate
    for _ in $(seq 50); do
        candidate=$((20000 + RANDOM % 20000))
        if ! port_open "$candidate"; then echo "$candidate"; return 0; fi
    done
    echo "no free port found" >&2
    return 1
}
