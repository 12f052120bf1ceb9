"""The intermediate representation: the Dag, Layer records on a networkx graph."""
