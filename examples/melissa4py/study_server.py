"""The seed's loop as the server of `melissa-nb run study.toml` (`[server] script`).

The runner starts `python study_server.py <melissa-nb server's options>`; the only change from
server.py's `main` is step 1: `MelissaServer.from_arguments()` reads those options (ports,
sample size, fields, output directory...) instead of melissa4py's own arguments. What the loop
is handed, one `simulation_id,field,timestep` line per message, goes to `seen_r<rank>.csv` in
the output directory (each rank is handed its own cells of every message).
"""

import sys

from melissa_nb import MelissaServer, SimulationData


def do_stuff(data, parameters, timestep):
    print(data, parameters, timestep)


def main() -> int:
    # 1. Configure and initialise the server from the options the study runner passes
    server = MelissaServer.from_arguments()
    config = server.config
    seen = []
    samples = 0
    while True:
        # 2. Check for messages/events
        status = server.run(timeout=100)
        if isinstance(status, SimulationData):
            # 3. Handle/process simulation data messages
            do_stuff(status.data, status.parameters, status.timestep)
            seen.append(f"{status.simulation_id},{status.field_name},{status.timestep}\n")
            samples += 1
            if samples >= config.sampling_size * config.timesteps * len(config.field_names):
                print("Received all samples. Stopping..")
                break
    # 4. Stop server
    code = server.stop()
    (config.output_dir / f"seen_r{server.rank}.csv").write_text("".join(seen))
    return code


if __name__ == "__main__":
    sys.exit(main())
