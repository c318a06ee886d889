#!/usr/bin/env bash
# On an H200: s16.sh tune (the H200 table, issue 11's criterion, eager vs SGLang); elsewhere: attrib.sh.
# carry [".baseline3/start", ".peers/s", ".exp"]
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  TUNE_S=${TUNE_S:-300} bash benchmarks/results/h200/2026-12-07-session16/scripts/s16.sh tune
else
  bash benchmarks/results/h100/2026-12-08-session18/scripts/attrib.sh
fi
