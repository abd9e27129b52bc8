"""Reports: the page builder, the context sections draw from, their output sink, the perceptron's report."""
