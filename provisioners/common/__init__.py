"""What several provisioners share, written once: the launch environment policy, image
references, and the CurveZMQ negotiation of kernels reached over a network."""
