"""What a rank gives out: the netCDF result files, each rank writing its own slices in turn
(`output`), the convergence test on the Sobol interval widths (`convergence`) and `melissa-nb
status`, the live view read from shared memory or the control endpoint (`status`). May import
the kernels' finalizers, `netcdf`, `server.config`, `server.ranks`, `server.claim`,
`server.live`, `server.launcher.control` and `server.pipeline.stages`; never `server.receive`
(the slices hand their results in)."""
