"""Checkpoints of a server rank: snapshot, atomic netCDF4 files, restart and repartition.

A checkpoint of rank r is `<dir>/checkpoint.r<r>.nc` (the newest) and `checkpoint.r<r>.prev.nc`
(the one before, the fallback). One file holds a rank's whole state as named arrays plus one
JSON attribute `meta` (study options, format version, slice layouts, job ids, counters):

- `slice<k>/<name>`: every state array of slice k (`general.*`, `sobol.*`: timesteps first,
  cells last) and `slice<k>/bits`, its received-timestep bitset (ids, words);
- `tracker/dropped`, `tracker/started`, `tracker/announced`: simulation statuses (uint8 per
  id; announced: its handshake was answered, so its data is accepted after a restart too; a
  checkpoint without it takes the started ones);
- `member<k>/values`, `member<k>/received`: Sobol groups being assembled from single members.

Writing never stalls the receive loop longer than a copy of the state: `snapshot` copies the
arrays (the loop's only cost), then a writer thread writes the copy to a temporary file, fsyncs
it, renames the newest file to `.prev`, renames the temporary file in place and fsyncs the
directory. At most one write is in flight and every netCDF call of a rank happens with no other
in progress (HDF5 is not thread safe). A sha256 over the meta and every array, stored as the
attribute `sha256`, detects a truncated or damaged file; loading then falls back to `.prev`.

Restart (`-r DIR`) with the same number of ranks gives each rank its own file back. With a
different number, every state array has cells last (`count`, per timestep, excepted), so a new
rank cuts the cells the partition gives it out of the old slices: exact for every statistic,
quantiles included, since nothing is merged. This needs the old ranks to have learned the whole
layout and to agree on the timesteps received of every slice they share between them.

Modules: `snapshot` (what a checkpoint holds, copied from the rank's state), `files` (the netCDF4
file of one rank, written atomically, read back and verified), `writer` (when to write, and the
writer thread), `restart` (what a new rank takes back from the old ranks' files) and
`repartition` (old slices cut for another number of ranks).
"""
