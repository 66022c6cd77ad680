#!/bin/bash
# Sets up a conda environment inside a fresh overlay, ready to be shared read-only by batch jobs:
# makes the overlay, installs Miniconda into /opt/conda inside it, installs packages.
#
#   Templates/setup-conda-env.sh [OVERLAY] [CONTAINER]
#   Templates/setup-conda-env.sh env.ext3 /project/images/ubuntu-22.04.sif
#
# Then, in jobs:  run-overlay -o env.ext3:ro -c CONTAINER -f job.txt
#
# It downloads Miniconda and packages, so it needs network access (it cannot run on a machine
# without it, nor on compute nodes that have none: run it on a login node). Size the overlay for
# what you install: a conda environment is easily 5 GiB and 100K-300K files (-n is thousands of
# files).
set -euo pipefail

overlay=${1:-conda-env.ext3}
container=${2:-${OVERLAY_CONTAINER:-}}
packages=${CONDA_PACKAGES:-"python=3.11 numpy pandas"}

if [ ! -e "$overlay" ]; then
    create-overlay -s 5G -n 300 -o "$overlay"
fi

container_args=()
if [ -n "$container" ]; then container_args=(-c "$container"); fi

# The overlay is writable here (the first and only one): everything written inside the
# container, /opt/conda included, lands in the overlay's upper/ directory.
run-overlay -o "$overlay" "${container_args[@]}" -- /bin/bash -c '
    set -euo pipefail
    cd /tmp
    curl -fsSL -o miniconda.sh https://repo.anaconda.com/miniconda/Miniconda3-latest-Linux-x86_64.sh
    bash miniconda.sh -b -p /opt/conda
    rm -f miniconda.sh
    source /opt/conda/etc/profile.d/conda.sh
    conda install -y '"$packages"'
    conda clean -y --all
    echo "conda environment ready in /opt/conda"
'

echo "Done. Use it read-only in jobs:"
echo "  run-overlay -o $overlay:ro ${container:+-c $container }-f job.txt"
echo "To add packages later, open it writable (no job may use it meanwhile):"
echo "  mount-overlay -o $overlay ${container:+-c $container}"
