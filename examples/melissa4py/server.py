"""melissa4py's README example, run on melissa_nb: only the imports and `sample_size` changed.

    python server.py --timesteps 10 --sample_size 4 --nb_parameters_simulation 2 \
        --txt_pull_port 5556 --txt_push_port 5555 --txt_req_port 5554 \
        --launcher_node_name 127.0.0.1

The seed's `main` below is melissa4py's, line for line, except `sample_size=args.sample_size`
(melissa4py never knew when a study ended; melissa_nb must, to end it and write results).
`simulation.py` in this folder is a matching simulation, `drive.py` a small launcher running a
whole study against this script. See docs/embedding.md.
"""

import argparse

from melissa_nb import MelissaServer, SimulationData


def do_stuff(data, parameters, timestep):
    print(data, parameters, timestep)


def main(args):
    # 1. Configure the and initlaize server
    server = MelissaServer(
        args.timesteps,
        args.nb_proc_server,
        args.nb_parameters_simulation,
        text_pull_port=args.txt_pull_port,
        text_push_port=args.txt_push_port,
        text_request_port=args.txt_req_port,
        launcher_node_name=args.launcher_node_name,
        fields=["heat1"],
        sample_size=args.sample_size,
    )
    samples = 0
    while True:
        # 2. Check for messages/events
        status = server.run(timeout=100)
        if isinstance(status, SimulationData):
            # 3. Handle/process simulation data messages
            do_stuff(status.data, status.parameters, status.timestep)
            samples += 1
            if samples >= int(args.sample_size * args.timesteps):
                print("Recieved all samples. Stopping..")
                break
    # 4. Stop server
    server.stop()


def parser() -> argparse.ArgumentParser:
    """The arguments melissa4py's example reads, with melissa_nb's default ports."""
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--timesteps", type=int, required=True)
    arguments.add_argument("--sample_size", type=int, required=True)
    arguments.add_argument("--nb_parameters_simulation", type=int, default=0)
    arguments.add_argument("--nb_proc_server", type=int, default=1)
    arguments.add_argument("--txt_pull_port", type=int, default=5556)
    arguments.add_argument("--txt_push_port", type=int, default=5555)
    arguments.add_argument("--txt_req_port", type=int, default=5554)
    arguments.add_argument("--launcher_node_name", default=None)
    return arguments


if __name__ == "__main__":
    main(parser().parse_args())
