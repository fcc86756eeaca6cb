#!/bin/sh
echo "hello from kiln (built reproducibly from a commit made at @EPOCH@)"
