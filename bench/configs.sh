# bench/configs.sh — the configs bench/proxy.sh and bench/instructions.sh run
# the backend and the proxies with, so both measure the same setup. Source it
# after setting TMP (a scratch directory), FDS (descriptor limit), MAXCONN
# (client connections each proxy accepts), WORKERS (threads or processes per
# proxy) and P_BACKEND (the backend's port).
#
#   nginx_backend_config             the backend: nginx, `return 200 "ok\n"`
#   nginx_proxy_config NAME PORT EXTRA   nginx as a reverse proxy (EXTRA: more
#                                    lines in its `location /`)
#   haproxy_config PORT EXTRA        HAProxy in mode http (EXTRA: more lines in
#                                    its backend)
#   sy_config PORT ADMIN_PORT EXTRA  Switchyard with its defaults (EXTRA: more
#                                    TOML for the service)
# shellcheck shell=bash

nginx_backend_config() {
    cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx-backend.pid;
error_log $TMP/nginx-backend/logs/error.log warn;
worker_rlimit_nofile $FDS;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/nginx-backend/body;
    proxy_temp_path $TMP/nginx-backend/proxy;
    server {
        listen 127.0.0.1:$P_BACKEND backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
}

nginx_proxy_config() { # name port extra_location_lines
    cat <<EOF
worker_processes $WORKERS;
daemon off;
pid $TMP/$1.pid;
error_log $TMP/$1/logs/error.log warn;
worker_rlimit_nofile $FDS;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/$1/body;
    proxy_temp_path $TMP/$1/proxy;
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$3
        }
    }
}
EOF
}

haproxy_config() { # port extra_backend_lines
    cat <<EOF
global
    nbthread $WORKERS
    maxconn $MAXCONN
    # HAProxy reserves two descriptors per connection; the hard limit here
    # (20000) is below that for 10k connections, and idle client connections
    # hold only one, so warn instead of refusing to start.
    no strict-limits
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 120s
    timeout server 10s
    timeout http-request 10s
    timeout http-keep-alive 120s
frontend fe
    bind 127.0.0.1:$1
    default_backend be
backend be
    server backend 127.0.0.1:$P_BACKEND
$2
EOF
}

# Switchyard: defaults everywhere except where it listens and how many
# client connections it accepts (raised so IDLE_CONNS fit).
sy_config() { # port admin_port extra_service_toml
    cat <<EOF
[admin]
listen = "127.0.0.1:$2"

[[listeners]]
name = "bench"
listen = "127.0.0.1:$1"
max_connections = $MAXCONN

[services.backend]
endpoints = ["127.0.0.1:$P_BACKEND"]
$3
[[routes]]
name = "all"
path = "/{*rest}"
service = "backend"
EOF
}
