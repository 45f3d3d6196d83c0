# Job runners of the recipe stages (copy this file into a recipe and edit it there).
#
#   local: utils/run.pl runs JOB=1:N jobs on this machine (at most one per CPU at once)
#   slurm: utils/slurm.pl submits them with sbatch as a job array and waits; put the
#          partition, time limit, account, ... in conf/slurm.conf
#          (untested here: the development machines had no Slurm)
#
# train_cmd: data and CPU jobs; cuda_cmd: training (espnet2.bin.launch adds --gpu N);
# decode_cmd: decoding jobs.
cmd_backend=${cmd_backend:-local}

case "${cmd_backend}" in
    local)
        export train_cmd="utils/run.pl"
        export cuda_cmd="utils/run.pl"
        export decode_cmd="utils/run.pl"
        ;;
    slurm)
        export train_cmd="utils/slurm.pl --config conf/slurm.conf"
        export cuda_cmd="utils/slurm.pl --config conf/slurm.conf"
        export decode_cmd="utils/slurm.pl --config conf/slurm.conf"
        ;;
    *)
        echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local or slurm)" >&2
        return 1
        ;;
esac
