"""Run time on the edge: the generalist (ONNX Runtime or torch), the router's decisions applied, the experts
asked over HTTP, links, pacing, control of the operating point, one edge session."""
