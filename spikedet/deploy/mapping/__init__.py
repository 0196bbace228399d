"""The mapper: a QuantGraph partitioned into core-sized tiles of a hardware profile.

Its modules follow the mapping's steps, and each imports only earlier ones:

1. ``geometry``     the hardware view of the graph (populations, edges, per-axis conv arithmetic)
2. ``precision``    the integer model checked against the profile's bit widths
3. ``edits``        edits of the hardware graph (restricted edges, merged identity edges)
4. ``psums``        partial-sum populations wired into a split layer
5. ``delays``       hardware depths, alignment delays and relay stages
6. ``connectivity`` a core model's per-core costs (Loihi 2) and its compiler's partition rule
7. ``tiles``        exact per-core figures of tilings
8. ``placement``    the tile of a population (search or partition) and the limit errors
9. ``splits``       which layers to split, into how many input-channel groups
10. ``mapper``      the steps put together: ``map_graph`` and the ``Mapping`` it returns

Callers import ``spikedet.deploy.mapping.mapper`` (``map_graph``, ``Mapping``); this package
module imports nothing, so importing one step never drags in the later ones.
"""
